"""Cross-drive dedupe for a mergerfs pool: link on the kept branch, then delete.

A duplicate at relative path R on branch B whose kept copy K lives on branch A
ends as a hardlink A/R -> K, and B/R is removed. The pool view is unchanged:
the same path shows the same bytes throughout (first the two copies, then the
link alone). One journalled operation per duplicate name:

  PENDING (names recorded) -> re-stat both -> byte compare -> re-stat ->
  create the missing parent dirs on A (owner/mode copied from B), link K at A/R ->
  LINKED: check A/R is K, re-stat and byte-compare B/R against it ->
  REMOVING: (quarantine link and) unlink B/R -> DONE.

Content is never in zero places: B/R is only removed once A/R exists, is K,
and holds the same bytes. Duplicates on A itself go through the hardlink
linker (hardlink.link_group).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

from dedupd import handles
from dedupd.dedup import hardlink as H
from dedupd.dedup import journal as J
from dedupd.dedup import recovery
from dedupd.dedup.verify import (
    Refused,
    check_metadata,
    readonly,
    refusal,
    restat,
    same_bytes,
    under,
)
from dedupd.dedup.writers import Writers
from dedupd.fsops import link as fs
from dedupd.index.store import IndexedFile
from dedupd.scan.scanner import DupGroup


@dataclass(frozen=True)
class PoolPolicy:
    """A pool: its branches (real paths), primaries and quarantine in branch space.

    primary_paths and quarantine are given as pool-view paths (under pool_root)
    and translated onto every branch.
    """

    volume: str
    pool_root: bytes
    branches: tuple[bytes, ...]
    primary_paths: tuple[bytes, ...] = ()
    link_primary_pairs: bool = False
    quarantine_rel: bytes | None = None  # relative to each branch

    def branch_of(self, path: bytes) -> bytes | None:
        best = None
        for b in self.branches:
            if under(path, (b,)) and (best is None or len(b) > len(best)):
                best = b
        return best

    def branch_primaries(self) -> tuple[bytes, ...]:
        out = []
        for p in self.primary_paths:
            if under(p, (self.pool_root,)):
                rel = p[len(self.pool_root.rstrip(b"/")):].lstrip(b"/")
                out += [os.path.join(b, rel) if rel else b for b in self.branches]
            else:
                out.append(p)  # already a branch path
        return tuple(out)

    def link_policy(self, branch: bytes) -> H.LinkPolicy:
        q = None if self.quarantine_rel is None else os.path.join(branch, self.quarantine_rel)
        return H.LinkPolicy(self.volume, self.branches, self.branch_primaries(),
                            self.link_primary_pairs, q)


def rel_to(path: bytes, root: bytes) -> bytes:
    return path[len(root.rstrip(b"/")):].lstrip(b"/")


def link_pool_group(journal: J.Journal | None, group: DupGroup, policy: PoolPolicy,
                    dry_run: bool = False) -> H.LinkResult:
    """Consolidate one group of identical files of a pool onto the kept file's branch.

    Same contract as hardlink.link_group (re-stat, byte compare, journal,
    dry_run changes nothing), plus: a duplicate is removed from its branch
    only after the new name on the kept branch exists and was verified.
    """
    lp = policy.link_policy(b"/")
    run = H.LinkRun(journal, lp, dry_run)
    files = [f for f in H.eligible(run, list(group.files)) if _one_branch(run, policy, f)]
    if len(files) < 2:
        return run.result()
    ranked = H.rank(files, lp.primary_paths)
    keep = ranked[0]
    a = policy.branch_of(keep.path)
    assert a is not None
    same = [f for f in ranked if policy.branch_of(f.path) == a]
    results = [run.result()]
    if len(same) > 1:
        results.append(H.link_group(journal, DupGroup(group.size, tuple(same)),
                                    policy.link_policy(a), dry_run))
        H.refresh(run, keep.key, keep.path)  # our links moved its ctime
    writers = Writers()
    for f in ranked:
        if policy.branch_of(f.path) == a:
            continue
        if H.is_primary(f, lp.primary_paths) and H.is_primary(keep, lp.primary_paths) \
                and not policy.link_primary_pairs:
            for p in f.paths:
                run.refuse(p, Refused("primary_pair", "both copies are in primary_paths"))
            continue
        _move_inode(run, policy, keep, a, f, writers)
    results.append(run.result())
    return _merge(results[1:])


def _one_branch(run: H.LinkRun, policy: PoolPolicy, f: IndexedFile) -> bool:
    bs = {policy.branch_of(p) for p in f.paths}
    if len(bs) == 1 and None not in bs:
        return True
    for p in f.paths:
        run.refuse(p, Refused("links_outside_scope", "names on several branches"))
    return False


def _merge(results: list[H.LinkResult]) -> H.LinkResult:
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(r.counts)
    return H.LinkResult(tuple(a for r in results for a in r.actions),
                        tuple(x for r in results for x in r.refused),
                        sum(r.linked for r in results),
                        sum(r.bytes_reclaimed for r in results), dict(counts),
                        tuple(x for r in results for x in r.restat))


def _move_inode(run: H.LinkRun, policy: PoolPolicy, keep: IndexedFile, a: bytes,
                f: IndexedFile, writers: Writers) -> None:
    b = policy.branch_of(f.path)
    assert b is not None
    for n, p in enumerate(f.paths):
        dest = os.path.join(a, rel_to(p, b))
        try:
            st = _precheck(run, keep, f, p, dest, writers)
        except Refused as r:
            run.refuse(p, r)
            continue
        if run.dry_run:
            _describe(run, keep, f, p, dest)
        else:
            q = None if policy.quarantine_rel is None else os.path.join(
                b, policy.quarantine_rel, os.path.basename(p)[:180] + b"."
                + os.urandom(6).hex().encode() + fs.QUARANTINE_SUFFIX)
            freed = n == len(f.paths) - 1 and st.st_nlink == 1 and q is None
            _move(run, keep, f, p, dest, a, b, q, freed)
        H.refresh(run, keep.key, keep.path)
        for rest in f.paths[n + 1:]:
            if H.refresh(run, f.key, rest):
                break


def _precheck(run: H.LinkRun, keep: IndexedFile, f: IndexedFile, p: bytes, dest: bytes,
              writers: Writers) -> os.stat_result:
    """Every check that needs no journal; returns the duplicate's stat."""
    writers.check(keep.key, keep.path)
    writers.check(f.key, p)
    if readonly(p) or readonly(keep.path):
        raise Refused("readonly", "a branch is mounted read-only")
    kst = restat(keep.path, run.ident[keep.key])
    dst = restat(p, run.ident[f.key])
    check_metadata(keep.path, kst, p, dst)
    try:
        cur = handles.lstat(dest)
    except FileNotFoundError:
        return dst
    except handles.PathChanged as e:
        raise Refused(e.reason, f"{os.fsdecode(dest)}: {e.strerror}") from None
    if (cur.st_dev, cur.st_ino) != keep.key:
        raise Refused("dest_exists", f"{os.fsdecode(dest)} exists on the kept branch")
    return dst


def _describe(run: H.LinkRun, keep: IndexedFile, f: IndexedFile, p: bytes, dest: bytes) -> None:
    try:
        if not same_bytes(keep.path, run.ident[keep.key], p, run.ident[f.key]):
            raise Refused("content_differs", "same hash, different bytes")
    except Refused as r:
        run.refuse(p, r)
        return
    run.actions.append(_action(keep.path, p, dest, f.size, "would"))


def _action(keep: bytes, dup: bytes, dest: bytes, size: int, result: str,
            op: int | None = None) -> dict[str, object]:
    a: dict[str, object] = {"action": "crossdrive", "keep": H.show(keep),
                            "replace": H.show(dup), "link": H.show(dest),
                            "paths": [H.show(keep), H.show(dup), H.show(dest)],
                            "size": size, "result": result}
    if op is not None:
        a["op"] = op
    return a


def _missing_dirs(a: bytes, rel_dir: bytes) -> tuple[bytes, ...]:
    out, cur = [], a
    for part in [x for x in rel_dir.split(b"/") if x]:
        cur = os.path.join(cur, part)
        if not handles.is_dir(cur):
            out.append(cur)
    return tuple(out)


def _move(run: H.LinkRun, keep: IndexedFile, f: IndexedFile, p: bytes, dest: bytes, a: bytes,
          b: bytes, q: bytes | None, freed: bool) -> None:
    jr = run.journal
    assert jr is not None
    exists = handles.exists(dest)  # precheck proved: then it is the kept inode
    rel_dir = os.path.dirname(rel_to(p, b))
    spec = J.OpSpec(run.policy.volume, "crossdrive", keep.path, p, keep.dev, keep.ino, f.dev,
                    f.ino, f.size, run.ident[f.key].mtime_ns,
                    temp_path=fs.temp_name(p),  # reserved: names the hold name
                    dest_path=None if exists else dest, quarantine_path=q,
                    dirs=() if exists else _missing_dirs(a, rel_dir))
    op = jr.begin(spec)
    try:
        _verify_pair(run, keep, f, keep.path, p)
        if not exists:
            fs.mkdirs_like(a, rel_dir, b)
            jr.step("mkdirs")
            fs.link_exact(keep.path, dest, expect=keep.key)
            jr.step("link dest")
        jr.set(op, J.LINKED)
        H.refresh(run, keep.key, keep.path)
        _verify_pair(run, keep, f, dest, p)
        jr.set(op, J.REMOVING)
        _remove(jr, spec)
    except (Refused, OSError) as e:
        _rollback(jr, op, spec, e)
        run.refuse(p, refusal(e))
        return
    jr.set(op, J.DONE)
    run.linked += 1
    if freed:
        run.reclaimed += f.size
    run.actions.append(_action(keep.path, p, dest, f.size, "done", op))


def _verify_pair(run: H.LinkRun, keep: IndexedFile, f: IndexedFile, kpath: bytes,
                 p: bytes) -> None:
    """The byte compare, on descriptors opened by handle and fstat-checked against
    both identities before and after reading (as hardlink does); the names are
    checked again where they change: link_exact's inode, unlink_if_inode's."""
    if not same_bytes(kpath, run.ident[keep.key], p, run.ident[f.key]):
        raise Refused("content_differs", "same hash, different bytes")


def _remove(jr: J.Journal, spec: J.OpSpec) -> None:
    if spec.quarantine_path is not None:
        fs.make_private_dirs(os.path.dirname(spec.quarantine_path))
        fs.link_exact(spec.dup_path, spec.quarantine_path, expect=(spec.dup_dev, spec.dup_ino))
        jr.step("link quarantine")
    if not fs.unlink_if_inode(spec.dup_path, spec.dup_dev, spec.dup_ino,
                              hold=spec.hold_path, step=jr.step):
        raise Refused("path_changed", f"{os.fsdecode(spec.dup_path)} no longer leads to the "
                      "verified duplicate; both copies kept")
    jr.step("unlink duplicate")


def _rollback(jr: J.Journal, op: int, spec: J.OpSpec, e: Exception) -> None:
    rec = jr.get(op)
    made = spec.dest_path is not None and handles.exists(spec.dest_path)
    if rec is not None and rec.state == J.PENDING and not made:
        fs.rmdirs_if_empty(spec.dirs)
        jr.set(op, J.REFUSED if isinstance(e, Refused) else J.ROLLED_BACK, str(e))
        return
    # The inode-based decision recovery makes: never drop the new link once
    # the duplicate is gone.
    after, detail = recovery.recover_cross_now(spec)
    jr.set(op, after, f"{e}; {detail}")
