"""Destructive steps of a consolidation, all through the dedup journal.

- `link_archive_duplicates`: copies of one content already inside the archive
  are hardlinked to one inode by the hardlink linker (dedupd.dedup.hardlink:
  re-stat, byte compare, temp link, atomic swap, journalled).
- `prune_sources` (opt-in): a source name is removed only after its bytes were
  compared with the archive file that holds them; each removal is a journalled
  operation of kind "crossdrive" with no new name (keep = the archive file,
  dup = the source name), so `dedupd recover` and the start of the next run
  finish it (fresh byte compare first) or roll it back. With quarantine_dir the
  removed name keeps a hardlink there (same filesystem as the source).

Journal operations are filed under the volume name "consolidate:NAME".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dedupd import handles
from dedupd.consolidate.compare import same_bytes
from dedupd.consolidate.inventory import Content, SourcePath
from dedupd.consolidate.roots import Roots
from dedupd.dedup import journal as J
from dedupd.dedup.recovery import finish_remove, recover_all
from dedupd.files.events import FileEvent, Ident
from dedupd.fsops.link import QUARANTINE_SUFFIX, temp_name
from dedupd.index.store import HashUpdate, Store


def journal_volume(name: str) -> str:
    return f"consolidate:{name}"


@dataclass
class OpsReport:
    linked: int = 0
    bytes_reclaimed: int = 0
    pruned: int = 0
    actions: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)
    recovered: list[dict[str, object]] = field(default_factory=list)
    bytes_read: int = 0


def recover(jr: J.Journal, name: str, rep: OpsReport) -> None:
    """Finish or roll back what an interrupted run of this consolidation left."""
    rep.recovered += [r.as_json() for r in recover_all(jr, journal_volume(name))]


def link_archive_duplicates(jr: J.Journal | None, store: Store, scan_id: int, name: str,
                            roots: Roots, dups: Sequence[Content], dry_run: bool,
                            rep: OpsReport) -> None:
    """Hardlink each group of identical archive inodes to one of them."""
    # imported here: the linker is a fifth of the start-up's imports, and a first
    # import (like most runs) has no archive duplicates to link
    from dedupd.dedup.hardlink import LinkPolicy, link_group
    from dedupd.scan.scanner import DupGroup

    policy = LinkPolicy(journal_volume(name), (roots.archive,))
    for c in dups:
        res = link_group(jr, DupGroup(c.size, c.archive), policy, dry_run=dry_run)
        rep.linked += res.linked
        rep.bytes_reclaimed += res.bytes_reclaimed
        rep.actions += list(res.actions)
        rep.refused += list(res.refused)
        if res.linked and not dry_run:
            _reindex(store, scan_id, c)


def _reindex(store: Store, scan_id: int, c: Content) -> None:
    """Record the archive names again after linking so the next run need not rehash."""
    events, hashes = [], []
    for f in c.archive:
        for p in f.paths:
            try:
                st = handles.lstat(p)
            except OSError:
                continue
            events.append(FileEvent.from_stat(p, st))
            if c.full is not None and (f.head is not None or f.full is not None):
                hashes.append(HashUpdate(st.st_dev, st.st_ino, f.head, c.full))
    if events:
        store.record(scan_id, events)
        store.save_hashes(hashes)


def _quarantine_path(qdir: bytes, s: SourcePath) -> bytes:
    rel = s.path[len(s.root.rstrip(b"/")) + 1:]
    tag = os.path.basename(s.root.rstrip(b"/"))
    return os.path.join(qdir, tag, rel + b"." + os.urandom(4).hex().encode() + QUARANTINE_SUFFIX)


def prune_sources(jr: J.Journal | None, name: str, pairs: Sequence[tuple[SourcePath, bytes]],
                  qdir: bytes | None, dry_run: bool, rep: OpsReport) -> None:
    """Remove each source name whose bytes equal its archive file (see module doc)."""
    for s, archive_path in pairs:
        f = s.file
        ident = f.ident
        if qdir is not None and _device(qdir, s.root) != f.dev:
            _refuse(rep, s.path, "quarantine-other-fs", "quarantine_dir is not on the "
                    "source's filesystem (a hardlink cannot keep the copy there)")
            continue
        if dry_run:  # the archive copy may not exist yet: it is compared in the real run
            rep.actions.append({"action": "prune", "path": os.fsdecode(s.path),
                                "archive": os.fsdecode(archive_path), "result": "would"})
            continue
        try:
            ast = handles.lstat(archive_path)
        except OSError as e:
            _refuse(rep, s.path, "archive-missing", e.strerror or str(e))
            continue
        if not _owner_keeps(ast, s.path, rep):
            continue
        assert jr is not None
        _prune_one(jr, name, s, ident, archive_path, ast, qdir, rep)


def _owner_keeps(ast: os.stat_result, src: bytes, rep: OpsReport) -> bool:
    """Whether the archive file may stand in for src: owned by root or by src's owner.
    A copy takes its first source's owner, and a content is archived once, whoever
    else holds it: another user owning it could rewrite it (their file) once src is
    gone. Else refused "archive-owner" (src stays)."""
    try:
        uid = handles.lstat(src).st_uid
    except OSError as e:
        _refuse(rep, src, "error", e.strerror or str(e))
        return False
    if ast.st_uid in (0, uid):
        return True
    _refuse(rep, src, "archive-owner", f"the archive file is owned by uid {ast.st_uid}, "
            f"not by the source's owner (uid {uid}): kept")
    return False


def _device(qdir: bytes, root: bytes) -> int:
    """The device the quarantine lives on (its nearest existing ancestor's)."""
    p = qdir
    while not os.path.exists(p) and p not in (b"/", b""):
        p = os.path.dirname(p)
    return os.lstat(p or root).st_dev


def _prune_one(jr: J.Journal, name: str, s: SourcePath, ident: Ident, archive_path: bytes,
               ast: os.stat_result, qdir: bytes | None, rep: OpsReport) -> None:
    f = s.file
    spec = J.OpSpec(journal_volume(name), "crossdrive", archive_path, s.path, ast.st_dev,
                    ast.st_ino, f.dev, f.ino, f.size, f.mtime_ns,
                    temp_path=temp_name(s.path),  # reserved: names the hold name
                    quarantine_path=None if qdir is None else _quarantine_path(qdir, s))
    op = jr.begin(spec)
    cmp = same_bytes(s.path, ident, archive_path, Ident.of(ast))
    rep.bytes_read += cmp.bytes_read
    if not cmp.equal:
        reason, detail = cmp.problem or ("differs", "content differs")
        jr.set(op, J.REFUSED, f"{reason}: {detail}")
        _refuse(rep, s.path, reason, detail)
        return
    jr.set(op, J.REMOVING)
    try:
        removed = finish_remove(spec)  # compares the bytes once more, right before unlink
    except OSError as e:
        jr.set(op, J.ROLLED_BACK, str(e))
        _refuse(rep, s.path, "error", str(e))
        return
    if not removed:
        jr.set(op, J.ROLLED_BACK, "changed before removal")
        _refuse(rep, s.path, "changed", "changed before removal")
        return
    jr.set(op, J.DONE)
    rep.pruned += 1
    rep.actions.append({"action": "prune", "path": os.fsdecode(s.path),
                        "archive": os.fsdecode(archive_path), "result": "done", "op": op})


def _refuse(rep: OpsReport, path: bytes, reason: str, detail: str) -> None:
    rep.refused.append({"path": os.fsdecode(path), "reason": reason, "detail": detail})
