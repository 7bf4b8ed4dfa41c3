"""Trust nothing a report says: re-stat and hash every file, keep only true groups.

A claimed file is skipped (with its reason) when it is missing, no longer a
regular file, outside the chosen volume/consolidation, of another size or
mtime than the report says, changes while it is read, or hashes differently
from the rest of its group. Survivors are recorded in the index with their
full hash, so the next `dedupd run` / `dedupd consolidate` need not read them.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from dedupd import handles
from dedupd.files.events import FileEvent, Problem
from dedupd.hashing import HashStats
from dedupd.hashing.read import read_one
from dedupd.index.store import HashUpdate, IndexedFile, Store
from dedupd.interop.reports import CandidateGroup, Claim


@dataclass(frozen=True)
class VerifiedGroup:
    size: int
    full: bytes
    paths: tuple[bytes, ...]  # one per distinct inode (hardlinks to it are dropped)


@dataclass
class Verification:
    groups: list[VerifiedGroup] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    hashing: HashStats = field(default_factory=HashStats)


def _within(path: bytes, scope: Sequence[bytes]) -> bool:
    return not scope or any(path.startswith(r.rstrip(b"/") + b"/") for r in scope)


def _mtime_ok(claim: Claim, st: os.stat_result) -> bool:
    if claim.mtime is None:
        return True
    if float(claim.mtime).is_integer():  # whole seconds (czkawka)
        return int(st.st_mtime) == int(claim.mtime)
    return abs(st.st_mtime - claim.mtime) < 1e-3


def _stat_claim(c: Claim, scope: Sequence[bytes], v: Verification) -> FileEvent | None:
    if not _within(c.path, scope):
        v.skipped.append(Problem(c.path, "outside", "not under the chosen volume or sources"))
        return None
    try:
        st = handles.lstat(c.path)  # a report's path is re-resolved, never followed
    except FileNotFoundError:
        v.skipped.append(Problem(c.path, "missing", "no such file any more"))
        return None
    except handles.PathChanged as e:
        v.skipped.append(Problem(c.path, e.reason, e.strerror or str(e)))
        return None
    except OSError as e:
        v.skipped.append(Problem(c.path, "unreadable", e.strerror or str(e)))
        return None
    if not stat.S_ISREG(st.st_mode):
        v.skipped.append(Problem(c.path, "not-a-file", "not a regular file (symlink?)"))
        return None
    if c.size is not None and st.st_size != c.size:
        v.skipped.append(Problem(c.path, "changed", f"size {st.st_size}, report says {c.size}"))
        return None
    if not _mtime_ok(c, st):
        v.skipped.append(Problem(c.path, "changed", "modified since the report was made"))
        return None
    return FileEvent.from_stat(c.path, st)


def _hash(ev: FileEvent, v: Verification) -> tuple[int, bytes] | None:
    f = IndexedFile(ev.dev, ev.ino, ev.size, ev.mtime_ns, ev.ctime_ns, None, None, 0,
                    (ev.path,))
    got = read_one(f, True)
    if isinstance(got, Problem):
        # an import report calls a file that is gone "missing", whenever it went
        reason = "missing" if got.reason == "vanished" else got.reason
        v.skipped.append(Problem(got.path, reason, got.detail))
        return None
    v.hashing.bytes_read += got.nread
    v.hashing.bytes_hashed += got.nread
    v.hashing.full_hashes += 1
    assert got.full is not None  # a whole read always yields the full hash
    return got.head, got.full


def verify_group(g: CandidateGroup, scope: Sequence[bytes], v: Verification,
                 ) -> list[tuple[FileEvent, int, bytes]]:
    """Hash each distinct inode of one claimed group; add the true subgroups to v."""
    by_inode: dict[tuple[int, int], FileEvent] = {}
    for c in g.claims:
        ev = _stat_claim(c, scope, v)
        if ev is None:
            continue
        if ev.key in by_inode:
            v.skipped.append(Problem(ev.path, "hardlink",
                                     f"same file as {os.fsdecode(by_inode[ev.key].path)}"))
            continue
        by_inode[ev.key] = ev
    hashed: list[tuple[FileEvent, int, bytes]] = []
    fulls: dict[bytes, list[FileEvent]] = defaultdict(list)
    for ev in by_inode.values():
        got = _hash(ev, v)
        if got is not None:
            hashed.append((ev, *got))
            fulls[got[1]].append(ev)
    matched = any(len(evs) > 1 for evs in fulls.values())
    for full, evs in fulls.items():
        if len(evs) > 1:
            v.groups.append(VerifiedGroup(evs[0].size, full, tuple(e.path for e in evs)))
        elif matched or len(fulls) > 1:
            v.skipped.append(Problem(evs[0].path, "differs",
                                     "content differs from the rest of its group"))
        else:
            v.skipped.append(Problem(evs[0].path, "unmatched",
                                     "no other file of its group is left to match"))
    return hashed


def verify_report(store: Store, groups: Sequence[CandidateGroup], scope: Sequence[bytes],
                  dry_run: bool = False) -> Verification:
    """Verify every claimed group; unless dry_run, record the hashed files in the index."""
    v = Verification()
    scan_id = None if dry_run else store.begin_scan(list(scope))
    with handles.anchored(scope):  # beneath the volume or sources, when one is chosen
        for g in groups:
            hashed = verify_group(g, scope, v)
            if scan_id is None or not hashed:
                continue
            store.record(scan_id, [ev for ev, _, _ in hashed])
            store.save_hashes([HashUpdate(ev.dev, ev.ino, head, full)
                               for ev, head, full in hashed])
    return v

