"""Carrying out one hardlink batch (the group commit of dedup/hardlink.py): PENDING
for every planned name in one synced write, the byte compare per kept file (or the
proof of the side-by-side read), the swap of each name on directory handles, one
filesystem sync, DONE for the batch. Recovery decides unmarked ops from the inodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from dedupd import dirhandles, handles, testpoints
from dedupd.dedup import journal as J
from dedupd.dedup import recovery
from dedupd.dedup.link_run import LinkRun, Planned, accept, action, refresh, show
from dedupd.dedup.verify import Refused, check_stat, compare_group, refusal, restat
from dedupd.files.events import Ident
from dedupd.fsops import link as fs
from dedupd.fsops.durable import sync_filesystem
from dedupd.fsops.release import Releaser
from dedupd.fsops.swap import Swap
from dedupd.index.store import IndexedFile


def _spec(run: LinkRun, keep: IndexedFile, f: IndexedFile, p: bytes) -> J.OpSpec:
    qdir = run.policy.quarantine_dir
    q = None
    if qdir is not None:
        q = os.path.join(qdir, os.path.basename(p)[:180] + b"." + os.urandom(6).hex().encode()
                         + fs.QUARANTINE_SUFFIX)
    return J.OpSpec(run.policy.volume, "hardlink", keep.path, p, keep.dev, keep.ino, f.dev,
                    f.ino, f.size, run.ident[f.key].mtime_ns, temp_path=fs.temp_name(p),
                    quarantine_path=q)


def execute(run: LinkRun) -> None:
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
    swapped: list[tuple[Planned, int]] = []
    touched: dict[int, bytes] = {}
    verdicts: dict[tuple[int, int], Refused | None] = {}
    proven: set[tuple[int, int]] = set()
    release = Releaser()
    try:
        for n, (pl, spec, op) in enumerate(zip(plan, specs, ops, strict=True)):
            if n == 0 or plan[n - 1].keep is not pl.keep:
                verdicts, proven = _compare(run, _same_keep(plan, n))
            if verdicts[pl.f.key] is None:  # a swap is tried: names may move, refused or not
                touched[pl.f.dev] = pl.path
            after = _replace(run, pl, spec, op, verdicts[pl.f.key], pl.f.key in proven,
                             release)
            if after is not None:
                swapped.append((pl, op))
                accept(run, pl.keep.key, after)  # our link moved the kept file's ctime
            else:
                refresh(run, pl.keep.key, pl.keep.path)
            for rest in pl.rest:
                if refresh(run, pl.f.key, rest):
                    break
    finally:
        release.close()  # the duplicates' blocks are free before the batch's sync
    if not touched:
        return
    # One sync per filesystem makes every link, swap, unlink and undo of the batch
    # (a save given back, a temp link dropped) durable before any of its final states
    # is written: recovery decides from inodes, but never revisits a final state.
    for path in touched.values():
        sync_filesystem(os.path.dirname(path))
    jr.step("sync")
    for pl, op in swapped:
        run.mark(op, J.DONE)
        run.linked += 1
        if pl.freed:
            run.reclaimed += pl.f.size
        run.actions.append(action(pl.keep.path, pl.path, pl.f.size, "done", op))


def _same_keep(plan: list[Planned], n: int) -> list[Planned]:
    """plan[n] and the names after it that keep the same file (one group)."""
    end = n + 1
    while end < len(plan) and plan[end].keep is plan[n].keep:
        end += 1
    return plan[n:end]


def _compare(run: LinkRun, group: list[Planned]
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


def _last_look(keep: Callable[[bytes], os.stat_result], spec: J.OpSpec, kid: Ident,
               dup: Callable[[bytes], os.stat_result], did: Ident) -> None:
    """A proven pair right before its swap: the kept file and the duplicate still have
    the identities the side-by-side read saw (what compare_group checks after reading:
    any write since moved ctime), else _Untouched. keep, dup: how each name is lstat'ed
    (verify.restat)."""
    try:
        restat(spec.keep_path, kid, lstat=keep)
        restat(spec.dup_path, did, lstat=dup)
    except Refused as r:
        raise _Untouched(r) from None


def _replace(run: LinkRun, pl: Planned, spec: J.OpSpec, op: int, verdict: Refused | None,
             proven: bool, release: Releaser) -> os.stat_result | None:
    """Swap one name of the batch whose inode the compare found equal (`verdict` None;
    proven: equal by run.proofs, not read again); the name's stat (the kept inode) when
    it now links the kept file (its DONE mark waits for the batch's sync), else None.
    release: the batch's, where the duplicate's unlinked inode is let go of."""
    jr = run.journal
    assert jr is not None
    p, did = pl.path, run.ident[pl.f.key]
    try:
        if verdict is None:
            return _swap(jr, spec, did, run.ident[pl.keep.key] if proven else None, run.dirs,
                         release)
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
          dirs: dirhandles.Dirs | None, release: Releaser) -> os.stat_result:
    """Link the kept file over the duplicate's name (fsops.swap.Swap: both directories'
    handles, from the batch's `dirs` when given); returns the name's final stat, the
    kept inode. kid: the kept file's identity when the pair is proven equal (see
    _last_look), else None."""
    assert spec.temp_path is not None
    tmp, p = spec.temp_path, spec.dup_path
    if spec.quarantine_path is not None:
        if kid is not None:  # before the quarantine link moves the duplicate's ctime
            lstat = handles.lstat if dirs is None else dirs.lstat
            _last_look(lstat, spec, kid, lstat, did)
        fs.make_private_dirs(os.path.dirname(spec.quarantine_path))
        fs.link_exact(p, spec.quarantine_path, durable=False,
                      expect=(spec.dup_dev, spec.dup_ino))
        jr.step("link quarantine")
    with Swap(spec.keep_path, tmp, p, dirs, release) as sw:
        if kid is not None and spec.quarantine_path is None:
            _last_look(lambda _: sw.lstat_keep(), spec, kid, lambda _: sw.lstat_dup(), did)
        # the temp name must be the verified kept inode
        sw.link_temp((spec.keep_dev, spec.keep_ino))
        jr.step("link temp")
        # The last look before the name changes (a quarantine link moved its ctime).
        restat(p, did, ctime=spec.quarantine_path is None, lstat=lambda _: sw.lstat_dup())
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
            _held_swap(jr, sw, spec, did)
        return sw.lstat_dup()


def _held_swap(jr: J.Journal, sw: Swap, spec: J.OpSpec, did: Ident) -> None:
    """The swap where names cannot be exchanged (zfs-fuse, NFS, SMB). The kernel has no
    "replace this name only if it is this inode", so the duplicate's name first moves
    to the hold name (the name is missing for that instant), where the held file is
    checked: the duplicate as verified (its ctime moved with the rename), else an
    editor saved over the name since the last look and the save gets its name back.
    Then the kept inode takes the name, never over a file made there meanwhile (that
    save wins: Refused, and recovery.resolve_hardlink settles the held duplicate), and
    the held duplicate goes. A crash anywhere: recovery finds the hold name from the
    journal's temp name and decides from the inodes."""
    p = spec.dup_path
    if sw.others_may_take_name():
        raise Refused("sticky_dir", f"{show(p)}: its name would be missing for an instant "
                      "in a shared sticky directory, where another user may create it")
    held = sw.hold()
    jr.step("hold")
    try:
        check_stat(p, held, did, ctime=False)
    except Refused as r:
        sw.give_back()
        jr.step("give back")
        raise Refused(r.reason, f"{show(p)} was replaced while linking") from None
    placed = sw.place()
    if placed is None:
        placed = sw.link_name()
        jr.step("link name")
        if placed:
            sw.unlink_temp(spec.keep_dev, spec.keep_ino)
            jr.step("unlink temp")
    else:
        jr.step("rename")
    if not placed or not handles.same_inode(sw.lstat_dup(), (spec.keep_dev, spec.keep_ino)):
        raise Refused("changed", f"{show(p)} was saved while linking")
    sw.unlink_held(spec.dup_dev, spec.dup_ino)
    jr.step("unlink hold")
