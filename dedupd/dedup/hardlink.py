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

Roles: this module plans (eligibility, the checks per name, the kept file);
dedup/link_exec.py carries out a batch (PENDING, compare or proof, swaps, sync,
DONE); dedup/link_run.py holds the run's state and result. The checks and the
swaps each reach a directory through one handle per batch phase (dirhandles.Dirs).

The user-visible name always exists and always holds the same bytes; the
duplicate's content stays until its last name is replaced. Refusals never
change anything and are counted by reason (docs/safety.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from dedupd import dirhandles, handles, testpoints
from dedupd.dedup import journal as J
from dedupd.dedup.link_exec import execute
from dedupd.dedup.link_run import (
    LinkPolicy,
    LinkResult,
    LinkRun,
    Planned,
    accept,
    action,
    refresh,
    show,
)
from dedupd.dedup.together import Proofs
from dedupd.dedup.verify import (
    Refused,
    check_stat,
    open_name,
    restat,
    same_bytes,
    same_metadata,
    under,
    xattrs_fd,
)
from dedupd.dedup.writers import Writers
from dedupd.files.events import Ident
from dedupd.index.store import IndexedFile
from dedupd.scan.scanner import DupGroup

# The run's types and helpers, for callers of this module (crossdrive, the engine).
__all__ = ["LinkPolicy", "LinkResult", "LinkRun", "accept", "eligible", "is_primary",
           "link_group", "link_groups", "look", "rank", "refresh", "show"]


def is_primary(f: IndexedFile, primaries: tuple[bytes, ...]) -> bool:
    return bool(primaries) and any(under(p, primaries) for p in f.paths)


def rank(files: list[IndexedFile], primaries: tuple[bytes, ...]) -> list[IndexedFile]:
    """Best keep candidate first: in a primary path, most names, smallest path."""
    return sorted(files, key=lambda f: (not is_primary(f, primaries), -len(f.paths), f.path))


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
    run.dirs = dirhandles.Dirs()
    try:
        for group in groups:
            _link_all(run, group, policy)
        execute(run)
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
            st = restat(f.path, f.ident,
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
            run.planned.append(Planned(keep, f, p, freed, tuple(f.paths[n + 1:])))


def _describe(run: LinkRun, keep: IndexedFile, f: IndexedFile, p: bytes) -> None:
    """A dry run's verdict on one name: the byte compare an apply would make, or, for a
    pair the hasher read side by side and found equal at the identities both names
    have now (run.ident: their re-stat before this), that proof, as an apply uses it."""
    kid, did = run.ident[keep.key], run.ident[f.key]
    try:
        proven = run.proofs is not None and run.proofs.equal(kid, did)
        if not proven and not same_bytes(keep.path, kid, p, did):
            raise Refused("content_differs", "same hash, different bytes")
    except Refused as r:
        run.refuse(p, r)
        return
    run.actions.append(action(keep.path, p, f.size, "would"))
