"""Hardlink dedupe on one filesystem (plain, ext4, tmpfs, ZFS): the safety contract.

Public entry points: `link_groups` (a batch of groups, one group commit) and
`link_group` (one). For each group of identical files it keeps one inode
(primary_paths first, then the inode that already has the most links, then
the smallest path) and replaces every name of every other inode by a hardlink
to it, one journalled operation per name, committed as a batch:

  checks per name (writers, read-only, re-stat, owner/mode/xattrs) ->
  PENDING for the whole batch (one synced write; each row names its temp link) ->
  per name: byte compare (its descriptors re-stat'ed before and after) ->
  link() the kept file to a temp name next to the duplicate (must be the kept
  inode) -> exchange (or rename) the temp name over the duplicate, drop the
  old copy's temp name -> one syncfs for the batch -> DONE for the batch
  (one commit; recovery decides unmarked ops from the inodes, see recovery.py).

The user-visible name always exists and always holds the same bytes; the
duplicate's content stays until its last name is replaced. Refusals never
change anything and are counted by reason (docs/safety.md).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dedupd import handles, testpoints
from dedupd.dedup import journal as J
from dedupd.dedup import recovery
from dedupd.dedup.together import Proofs
from dedupd.dedup.verify import (
    Refused,
    Writers,
    check_stat,
    compare_group,
    open_name,
    refusal,
    restat,
    same_bytes,
    same_metadata,
    under,
    xattrs_fd,
)
from dedupd.files.events import Ident
from dedupd.fsops import link as fs
from dedupd.fsops.copy import sync_filesystem
from dedupd.index.store import IndexedFile
from dedupd.scan.scanner import DupGroup


@dataclass(frozen=True)
class LinkPolicy:
    """How a group is linked.

    scope: the volume's roots; an inode with names outside them (or names the
    scan did not see) is never touched. primary_paths: a file below one of
    them is kept; two such files are linked only if link_primary_pairs.
    quarantine_dir: replaced copies keep a name there (same filesystem).
    """

    volume: str
    scope: tuple[bytes, ...]
    primary_paths: tuple[bytes, ...] = ()
    link_primary_pairs: bool = False
    quarantine_dir: bytes | None = None


@dataclass(frozen=True)
class LinkResult:
    """What link_group did (or, dry run, would do).

    actions: one dict per name replaced (result done|would|rolled_back);
    refused: one dict per name left alone, with its reason; counts: by reason.
    bytes_reclaimed counts inodes whose last name was replaced (their blocks
    are freed unless a process still holds them open or a snapshot pins them).
    restat: (before, after) of every inode whose ctime only our own links moved,
    in order, so the index can take the new ctime instead of reading it again.
    """

    actions: tuple[dict[str, Any], ...] = ()
    refused: tuple[dict[str, str], ...] = ()
    linked: int = 0
    bytes_reclaimed: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    restat: tuple[tuple[Ident, Ident], ...] = ()


def show(p: bytes) -> str:
    return os.fsdecode(p)


def is_primary(f: IndexedFile, primaries: tuple[bytes, ...]) -> bool:
    return bool(primaries) and any(under(p, primaries) for p in f.paths)


def rank(files: list[IndexedFile], primaries: tuple[bytes, ...]) -> list[IndexedFile]:
    """Best keep candidate first: in a primary path, most names, smallest path."""
    return sorted(files, key=lambda f: (not is_primary(f, primaries), -len(f.paths), f.path))


@dataclass(frozen=True)
class _Planned:
    """A name that passed every check and waits for its batch: replace `path` (a name
    of f) by a link to keep; `rest` are f's later names (to refresh its identity)."""

    keep: IndexedFile
    f: IndexedFile
    path: bytes
    freed: bool
    rest: tuple[bytes, ...]


class LinkRun:
    """Accumulates the outcome of a batch of groups (mutable; link_groups and the
    cross-drive linker each own one for the length of a call)."""

    def __init__(self, journal: J.Journal | None, policy: LinkPolicy, dry_run: bool) -> None:
        self.journal, self.policy, self.dry_run = journal, policy, dry_run
        self.actions: list[dict[str, Any]] = []
        self.refused: list[dict[str, str]] = []
        self.counts: Counter[str] = Counter()
        self.linked = 0
        self.reclaimed = 0
        self.ident: dict[tuple[int, int], Ident] = {}
        self.restat: list[tuple[Ident, Ident]] = []
        # Final states of this group's ops, written in one commit at the end:
        # until then recovery would decide them from the inodes anyway.
        self.marks: list[tuple[int, str, str | None]] = []
        self.planned: list[_Planned] = []  # checked names waiting for the batch
        self.proofs: Proofs | None = None  # equal bytes already seen (dedup/together.py)
        # link_groups' directory handles, each directory resolved once per batch
        # (None: every name resolves its own, as crossdrive's callers do)
        self.dirs: handles.Dirs | None = None

    def parent(self, path: bytes) -> handles.Parent:
        """path's directory handle and final name (close it after use)."""
        return self.dirs.parent(path) if self.dirs is not None else handles.Parent(path)

    def lstat(self, path: bytes) -> os.stat_result:
        return self.dirs.lstat(path) if self.dirs is not None else handles.lstat(path)

    def mark(self, op: int, state: str, reason: str | None = None) -> None:
        self.marks.append((op, state, reason))

    def flush(self) -> None:
        if self.journal is not None and self.marks:
            self.journal.set_many(self.marks)
        self.marks = []

    def refuse(self, path: bytes, r: Refused) -> None:
        self.refused.append({"path": show(path), "reason": r.reason, "detail": r.detail})
        self.counts[r.reason] += 1

    def result(self) -> LinkResult:
        return LinkResult(tuple(self.actions), tuple(self.refused), self.linked,
                          self.reclaimed, dict(self.counts), tuple(self.restat))


def link_group(journal: J.Journal | None, group: DupGroup, policy: LinkPolicy,
               dry_run: bool = False) -> LinkResult:
    """Replace every duplicate name in `group` by a hardlink to one kept inode.

    Contract: the group's files were found equal by hash and their IndexedFile
    stat fields are what was hashed; nothing is trusted beyond that — each name
    is re-stat'ed and byte-compared right before it is replaced. With dry_run
    (journal may then be None) all checks run, including the byte compare, and
    nothing is written anywhere. Idempotent: a group already linked to one
    inode is a no-op. Blocking; call from a worker thread. The caller should
    hold the volume lock (dedup/lock.py) so recovery never races it.

    Example (an archive's duplicates, after a scan that produced `group`):

        jr = Journal(store)
        res = link_group(jr, group, LinkPolicy("archive", (b"/mnt/archive",)))
        jr.close()
        # res.linked, res.bytes_reclaimed, res.counts["content_differs"], ...
    """
    return link_groups(journal, [group], policy, dry_run)


def link_groups(journal: J.Journal | None, groups: Sequence[DupGroup], policy: LinkPolicy,
                dry_run: bool = False, proofs: Proofs | None = None) -> LinkResult:
    """link_group over several groups as one group commit (see the module docstring):
    every name is checked first, then the batch's PENDING rows are committed in one
    synced write, each name is verified and swapped, the filesystem is synced once,
    and the DONE states are committed together.

    proofs: files the hasher already read side by side and found equal
    (dedup/together.py); such a pair is verified by checking that both still have
    the identity they were read at, instead of reading them again."""
    if journal is None and not dry_run:
        raise ValueError("link_group needs a journal unless dry_run")
    run = LinkRun(journal, policy, dry_run)
    run.proofs = proofs
    run.dirs = handles.Dirs()
    try:
        for group in groups:
            _link_all(run, group, policy)
        _execute(run)
    finally:
        run.dirs.close()
        run.dirs = None
        run.flush()
    return run.result()


def _link_all(run: LinkRun, group: DupGroup, policy: LinkPolicy) -> None:
    files = eligible(run, list(group.files))
    if len(files) < 2:
        return
    ranked = rank(files, policy.primary_paths)
    keep = ranked[0]
    writers = Writers()
    try:
        kl = look(run, keep, keep.path, writers)
        if kl.readonly:
            raise Refused("keep_readonly", show(keep.path))
    except Refused as r:
        for f in ranked[1:]:
            for p in f.paths:
                run.refuse(p, r)
        return
    for f in ranked[1:]:
        if is_primary(f, policy.primary_paths) and is_primary(keep, policy.primary_paths) \
                and not policy.link_primary_pairs:
            for p in f.paths:
                run.refuse(p, Refused("primary_pair", "both copies are in primary_paths"))
            continue
        _link_inode(run, keep, kl, f, writers)
    return


@dataclass(frozen=True)
class Look:
    """One name as the checks before a batch saw it, through one directory handle."""

    st: os.stat_result
    readonly: bool
    xattrs: dict[str, bytes]


def look(run: LinkRun, f: IndexedFile, p: bytes, writers: Writers) -> Look:
    """Every check of a name that needs no journal, on one directory handle and one
    descriptor: the name is still f's unchanged regular file (re-stat), not open for
    writing, on a writable mount; plus its xattrs for the metadata check."""
    testpoints.at("verify", p)
    try:
        dp = run.parent(p)
    except FileNotFoundError:
        raise Refused("vanished", show(p)) from None
    except handles.PathChanged as e:
        raise Refused(e.reason, f"{show(p)}: {e.strerror}") from None
    with dp:
        try:
            st = check_stat(p, dp.lstat(), run.ident[f.key])
        except FileNotFoundError:
            raise Refused("vanished", show(p)) from None
        fd = open_name(dp)
        try:
            if not handles.same_inode(os.fstat(fd), f.key):
                raise Refused("changed", f"{show(p)} was replaced while checked")
            writers.check_fd(f.key, fd)
            ro = b"/.zfs/snapshot/" in p or bool(os.fstatvfs(dp.fd).f_flag & os.ST_RDONLY)
            return Look(st, ro, xattrs_fd(fd) if not ro else {})
        finally:
            os.close(fd)


def eligible(run: LinkRun, files: list[IndexedFile]) -> list[IndexedFile]:
    """Drop inodes that moved since hashing or have names outside the scope."""
    out = []
    for f in files:
        try:
            st = restat(f.path, Ident(f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns),
                        lstat=run.lstat)
            outside = [p for p in f.paths if not under(p, run.policy.scope)]
            if st.st_nlink > len(f.paths) or outside:
                raise Refused("links_outside_scope",
                              f"{st.st_nlink} links, {len(f.paths)} seen in the volume")
        except Refused as r:
            for p in f.paths:
                run.refuse(p, r)
            continue
        run.ident[f.key] = Ident.of(st)
        out.append(f)
    return out


def _link_inode(run: LinkRun, keep: IndexedFile, kl: Look, f: IndexedFile,
                writers: Writers) -> None:
    for n, p in enumerate(f.paths):
        last = n == len(f.paths) - 1
        try:
            if f.dev != keep.dev:
                raise Refused("different_fs", "the files are on different filesystems")
            dl = look(run, f, p, writers)
            if dl.readonly:
                raise Refused("readonly", "the duplicate's directory is read-only")
            dst = dl.st
            same_metadata(kl.st, kl.xattrs.copy, dst, dl.xattrs.copy)
        except Refused as r:
            run.refuse(p, r)
            continue
        if run.dry_run:
            _describe(run, keep, f, p)
        else:
            freed = last and dst.st_nlink == 1 and run.policy.quarantine_dir is None
            run.planned.append(_Planned(keep, f, p, freed, tuple(f.paths[n + 1:])))


def refresh(run: LinkRun, key: tuple[int, int], path: bytes) -> bool:
    """After our own link changes, accept the new ctime if nothing else moved."""
    try:
        st = run.lstat(path)
    except OSError:
        return False
    return accept(run, key, st)


def accept(run: LinkRun, key: tuple[int, int], st: os.stat_result) -> bool:
    """refresh() on a stat already taken (through the caller's handle)."""
    old = run.ident[key]
    if old.matches(st, ctime=False):
        run.ident[key] = Ident.of(st)
        if st.st_ctime_ns != old.ctime_ns:
            run.restat.append((old, run.ident[key]))
        return True
    return False


def _describe(run: LinkRun, keep: IndexedFile, f: IndexedFile, p: bytes) -> None:
    try:
        if not same_bytes(keep.path, run.ident[keep.key], p, run.ident[f.key]):
            raise Refused("content_differs", "same hash, different bytes")
    except Refused as r:
        run.refuse(p, r)
        return
    run.actions.append(_action(keep.path, p, f.size, "would"))


def _action(keep: bytes, dup: bytes, size: int, result: str, op: int | None = None,
            reason: str = "") -> dict[str, Any]:
    a: dict[str, Any] = {"action": "hardlink", "keep": show(keep), "replace": show(dup),
                         "paths": [show(keep), show(dup)], "size": size, "result": result}
    if op is not None:
        a["op"] = op
    if reason:
        a["reason"] = reason
    return a


def _spec(run: LinkRun, keep: IndexedFile, f: IndexedFile, p: bytes) -> J.OpSpec:
    qdir = run.policy.quarantine_dir
    q = None
    if qdir is not None:
        q = os.path.join(qdir, os.path.basename(p)[:180] + b"." + os.urandom(6).hex().encode()
                         + fs.QUARANTINE_SUFFIX)
    return J.OpSpec(run.policy.volume, "hardlink", keep.path, p, keep.dev, keep.ino, f.dev,
                    f.ino, f.size, run.ident[f.key].mtime_ns, temp_path=fs.temp_name(p),
                    quarantine_path=q)


def _execute(run: LinkRun) -> None:
    """Carry out the planned names as one batch (the group commit)."""
    plan, run.planned = run.planned, []
    jr = run.journal
    if not plan or jr is None:
        return
    specs = [_spec(run, pl.keep, pl.f, pl.path) for pl in plan]
    ops = jr.begin_many(specs)
    testpoints.at("batch", b"")
    if run.dirs is not None:
        # The swaps resolve each directory afresh, after the PENDING commit: a directory
        # swapped for a symlink since the checks is refused (path_changed), not followed
        # through the handle the checks held.
        run.dirs.close()
    swapped: list[tuple[_Planned, int]] = []
    verdicts: dict[tuple[int, int], Refused | None] = {}
    proven: set[tuple[int, int]] = set()
    for n, (pl, spec, op) in enumerate(zip(plan, specs, ops, strict=True)):
        if n == 0 or plan[n - 1].keep is not pl.keep:
            verdicts, proven = _compare(run, _same_keep(plan, n))
        after = _replace(run, pl, spec, op, verdicts[pl.f.key], pl.f.key in proven)
        if after is not None:
            swapped.append((pl, op))
            accept(run, pl.keep.key, after)  # our link moved the kept file's ctime
        else:
            refresh(run, pl.keep.key, pl.keep.path)
        for rest in pl.rest:
            if refresh(run, pl.f.key, rest):
                break
    if not swapped:
        return
    # One sync per filesystem makes every link, swap and unlink of the batch
    # durable before any of them is marked DONE (recovery decides from inodes).
    for path in {pl.f.dev: pl.path for pl, _ in swapped}.values():
        sync_filesystem(os.path.dirname(path))
    jr.step("sync")
    for pl, op in swapped:
        run.mark(op, J.DONE)
        run.linked += 1
        if pl.freed:
            run.reclaimed += pl.f.size
        run.actions.append(_action(pl.keep.path, pl.path, pl.f.size, "done", op))


def _same_keep(plan: list[_Planned], n: int) -> list[_Planned]:
    """plan[n] and the names after it that keep the same file (one group)."""
    end = n + 1
    while end < len(plan) and plan[end].keep is plan[n].keep:
        end += 1
    return plan[n:end]


def _compare(run: LinkRun, group: list[_Planned]
             ) -> tuple[dict[tuple[int, int], Refused | None], set[tuple[int, int]]]:
    """The byte compare of a kept file with its duplicates in the batch, the kept file
    read once for all (verify.compare_group): per duplicate inode, None when equal,
    else why not. Each descriptor is checked against its identity before and after
    reading; the names are checked again by the swap (link_temp's inode, the last
    re-stat). Also the duplicates in run.proofs with the kept file: compared when they
    were hashed, they are not read again; their swap first checks that both names
    still have the identities they were read at (_last_look)."""
    keep = group[0].keep
    kid = run.ident[keep.key]
    dups = list({pl.f.key: pl for pl in reversed(group)}.values())[::-1]
    proofs = run.proofs
    proven = {pl.f.key for pl in dups
              if proofs is not None and proofs.equal(kid, run.ident[pl.f.key])}
    rest = [pl for pl in dups if pl.f.key not in proven]
    verdicts: dict[tuple[int, int], Refused | None] = dict.fromkeys(proven)
    if not rest:
        return verdicts, proven
    try:
        got = compare_group(keep.path, kid, [(pl.path, run.ident[pl.f.key]) for pl in rest])
    except Refused as r:
        return {pl.f.key: r for pl in dups}, set()
    differs = Refused("content_differs", "same hash, different bytes")
    verdicts.update({pl.f.key: c if isinstance(c, Refused) else None if c.equal else differs
                     for pl, c in zip(rest, got, strict=True)})
    return verdicts, proven


class _Untouched(Exception):
    """A proven pair failed its last look, before anything changed: refused as a byte
    compare would have refused it, nothing to roll back."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(str(refused))
        self.refused = refused


def _last_look(keep: Callable[[], os.stat_result], spec: J.OpSpec, kid: Ident,
               dup: Callable[[], os.stat_result], did: Ident) -> None:
    """A proven pair right before its swap: the kept file and the duplicate still have
    the identities the side-by-side read saw (what compare_group checks after reading:
    any write since moved ctime), else _Untouched."""
    try:
        for path, st, want in ((spec.keep_path, keep, kid), (spec.dup_path, dup, did)):
            testpoints.at("verify", path)
            try:
                check_stat(path, st(), want)
            except FileNotFoundError:
                raise Refused("vanished", show(path)) from None
    except Refused as r:
        raise _Untouched(r) from None
    except handles.PathChanged as e:
        raise _Untouched(Refused(e.reason, str(e))) from None


def _replace(run: LinkRun, pl: _Planned, spec: J.OpSpec, op: int,
             verdict: Refused | None, proven: bool) -> os.stat_result | None:
    """Swap one name of the batch whose inode the compare found equal (`verdict` None;
    proven: equal by run.proofs, not read again); the name's stat (the kept inode) when
    it now links the kept file (its DONE mark waits for the batch's sync), else None."""
    jr = run.journal
    assert jr is not None
    p, did = pl.path, run.ident[pl.f.key]
    try:
        if verdict is None:
            return _swap(jr, spec, did, run.ident[pl.keep.key] if proven else None, run.dirs)
    except _Untouched as u:
        verdict = u.refused
    except (Refused, OSError) as e:
        # Decide like recovery does, from the inodes: the swap may have happened.
        after, detail = recovery.resolve_hardlink(spec)
        if after != J.DONE:
            run.mark(op, after, f"{e}; {detail}")
            run.refuse(p, refusal(e))
            return None
        try:
            return handles.lstat(p)
        except OSError:
            return None
    assert verdict is not None
    run.mark(op, J.REFUSED, f"{verdict.reason}: {verdict.detail}")
    run.refuse(p, verdict)
    return None


def _swap(jr: J.Journal, spec: J.OpSpec, did: Ident, kid: Ident | None,
          dirs: handles.Dirs | None) -> os.stat_result:
    """Link the kept file over the duplicate's name (fsops.link.Swap: both directories'
    handles, from the batch's `dirs` when given); returns the name's final stat, the
    kept inode. kid: the kept file's identity when the pair is proven equal (see
    _last_look), else None."""
    assert spec.temp_path is not None
    tmp, p = spec.temp_path, spec.dup_path
    if spec.quarantine_path is not None:
        if kid is not None:  # before the quarantine link moves the duplicate's ctime
            lstat = handles.lstat if dirs is None else dirs.lstat
            _last_look(lambda: lstat(spec.keep_path), spec, kid, lambda: lstat(p), did)
        fs.make_private_dirs(os.path.dirname(spec.quarantine_path))
        fs.link_exact(p, spec.quarantine_path, durable=False,
                      expect=(spec.dup_dev, spec.dup_ino))
        jr.step("link quarantine")
    with fs.Swap(spec.keep_path, tmp, p, dirs) as sw:
        if kid is not None and spec.quarantine_path is None:
            _last_look(sw.lstat_keep, spec, kid, sw.lstat_dup, did)
        # the temp name must be the verified kept inode
        sw.link_temp((spec.keep_dev, spec.keep_ino))
        jr.step("link temp")
        # The last look before the name changes (a quarantine link moved its ctime).
        testpoints.at("verify", p)
        try:
            check_stat(p, sw.lstat_dup(), did, ctime=spec.quarantine_path is None)
        except FileNotFoundError:
            raise Refused("vanished", show(p)) from None
        if sw.exchange():
            jr.step("exchange")
            st = sw.lstat_temp()
            if (st.st_dev, st.st_ino) != (spec.dup_dev, spec.dup_ino):
                # Someone replaced the name in the last instant: put theirs back.
                sw.exchange()
                jr.step("exchange back")
                raise Refused("changed", f"{show(p)} was replaced while linking")
            sw.unlink_temp(spec.dup_dev, spec.dup_ino)
            jr.step("unlink temp")
        else:
            sw.rename()
            jr.step("rename")
        return sw.lstat_dup()
