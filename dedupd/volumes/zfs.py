"""Kind "zfs": hardlink dedupe with change tracking through daemon-owned snapshots.

Each pass takes a snapshot `<dataset>@dedupdpass-<UTC time>` before it looks
at anything, and, where the zfs tool has `zfs diff` (OpenZFS), lists what
changed since the last processed pass snapshot instead of walking the tree.
Where it does not (zfs-fuse), the pass falls back to the stat walk and takes no
snapshot at all. Pass snapshots other than the newest processed one are
destroyed at the end of the pass, so they never pin replaced blocks for long
(space freed by linking shows once the previous pass snapshot is released).
The prefix differs from the backup jobs' so neither touches the other's.

The dataset is the one mounted at the volume's path (zfs_mounts), and how
diff lines become index work is zfs_track's business. The pass walks the whole
tree instead when there is no earlier pass snapshot, every zfs_full_walk_days
(the diff can omit changes), when the diff reports errors, and when
cross_mounts lets the walk into other mounts the diff cannot see. docs/zfs.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from dedupd import proc
from dedupd.config import VolumeConfig
from dedupd.dedup.lock import volume_lock
from dedupd.index.carry import carry_forward
from dedupd.index.store import Store
from dedupd.scan.events import FileEvent
from dedupd.scan.scanner import RECORD_BATCH, batches
from dedupd.scan.walk import WalkOptions, walk
from dedupd.volumes import PassOptions, Step, register
from dedupd.volumes._base import ScanPass
from dedupd.volumes.plain import PlainPass
from dedupd.volumes.zfs_diff import DiffEntry
from dedupd.volumes.zfs_mounts import Mount, dataset_for, mounts_below, snapdir_excludes
from dedupd.volumes.zfs_track import Reconciler, plan, run_diff

PASS_PREFIX = "dedupdpass-"
log = logging.getLogger("dedupd.zfs")


def has_diff() -> bool:
    """True when the installed zfs tool knows `zfs diff` (OpenZFS; not zfs-fuse)."""
    r = proc.run(["zfs", "diff"], check=False, timeout=30)
    err = r.stderr.lower()
    return "unrecognized command" not in err and "diff" in err


def pass_snapshots(dataset: str) -> list[str]:
    """This daemon's pass snapshots of dataset (full names), oldest first."""
    out = proc.run(["zfs", "list", "-H", "-t", "snapshot", "-d", "1", "-o", "name",
                    dataset]).text
    snaps = [s for s in out.splitlines() if s.startswith(f"{dataset}@{PASS_PREFIX}")]
    return sorted(snaps)


def release(snaps: list[str], keep: str | None) -> list[str]:
    """Destroy pass snapshots except `keep`; returns problems (held ones stay)."""
    problems = []
    for s in snaps:
        if s != keep and "@" + PASS_PREFIX in s:
            try:
                proc.run(["zfs", "destroy", s], timeout=300)
            except proc.ProcError as e:
                problems.append(f"{s}: {e}")
    return problems


class ZfsPass(PlainPass):
    """PlainPass whose changed files come from `zfs diff` between pass snapshots."""

    datasets: list[Mount]

    def __init__(self, vol: VolumeConfig, store: Store, opts: PassOptions) -> None:
        super().__init__(vol, store, opts)
        self.datasets = []  # mounted datasets the walk may reach (set by the pass)

    def steps(self) -> Iterator[Step]:
        try:
            with volume_lock(self.lock_root()):
                yield from self.prepare()
                yield from self._tracked()
        finally:
            self.journal.close()

    def _tracked(self) -> Iterator[Step]:
        mnt = dataset_for(self.vol.path)
        dataset = mnt.dataset
        below = mounts_below(self.roots[0]) if self.vol.cross_mounts else []
        self.datasets = [mnt, *(m for m in below if m.is_zfs)]
        meta_key = f"zfs_pass_snapshot:{self.vol.name}"
        old = pass_snapshots(dataset)
        if not has_diff() or below:
            # The diff of one dataset cannot see other mounts the walk enters.
            self.c.add("zfs_diff_unavailable" if not below else "zfs_walk_child_mounts")
            yield from self._full_walk()
            self._release(old, None)
            return
        new = f"{dataset}@{PASS_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}" \
              f"{time.time_ns() % 10**6:06d}Z"
        if not self.dry:
            proc.run(["zfs", "snapshot", new], timeout=300)
        prev = self.store.get_meta(meta_key)
        diff = None
        why = self._walk_reason(prev, old)
        if why is None:
            diff = self._diff(str(prev), new)
        else:
            self.c.add(why)
        if diff is not None:
            yield from self._incremental(diff)
        else:
            yield from self._full_walk()
        if not self.dry:
            self.store.set_meta(meta_key, new)
            self._release(pass_snapshots(dataset), new)

    def _walk_reason(self, prev: str | None, old: list[str]) -> str | None:
        """Why this pass walks the whole tree instead of reading the diff (a counter
        name), or None when the diff can be used."""
        if self.dry:
            return "zfs_walk_dry_run"  # a dry run takes no snapshot to diff against
        if self.opts.force_rescan:
            return "zfs_walk_forced"
        if prev not in old:
            return "zfs_walk_no_base"
        last = float(self.store.get_meta(f"zfs_full_walk:{self.vol.name}") or 0)
        if time.time() - last >= self.vol.zfs_full_walk_days * 86400:
            return "zfs_walk_scheduled"
        return None

    def _full_walk(self) -> Iterator[Step]:
        """A verification walk of the whole tree (also what a pass without diff does)."""
        self.c.add("zfs_full_walks")
        yield from ScanPass.steps(self)
        if not self.dry:
            self.store.set_meta(f"zfs_full_walk:{self.vol.name}", str(time.time()))

    def walk_options(self) -> WalkOptions:
        return WalkOptions(self.vol.min_size,
                           self.vol.exclude + snapdir_excludes(self.datasets),
                           self.vol.cross_mounts)

    def changed_files(self) -> Iterator[FileEvent]:
        return self.without_own(walk(self.roots, self.walk_options(), self.walk_stats))

    def _diff(self, prev: str, new: str) -> list[DiffEntry] | None:
        """Changes prev -> new, or None (then the pass walks) if zfs diff fails or
        its output is incomplete."""
        r = run_diff(prev, new)
        if r.entries is None:
            reason = "zfs_diff_incomplete" if r.incomplete else "zfs_diff_failed"
            log.warning("%s: %s; walking the tree instead", self.vol.name, r.problem)
            self.problems.append({"path": str(self.vol.path), "reason": reason,
                                  "detail": f"{r.problem}; walked the tree instead"})
            self.c.add(f"skips_{reason}")
            return None
        return list(r.entries)

    def _release(self, snaps: list[str], keep: str | None) -> None:
        if self.dry:
            return
        for p in release(snaps, keep):
            self.problems.append({"path": str(self.vol.path), "reason": "snapshot_held",
                                  "detail": p})

    def _incremental(self, entries: list[DiffEntry]) -> Iterator[Step]:
        scan_id = self.store.begin_scan(self.roots)
        self.c.add("zfs_diff_entries", len(entries))
        rec = Reconciler(self.store, self.roots, self.walk_options(), self.walk_stats)
        done = rec.apply(plan(entries))
        self.c.add("zfs_dirs_relisted", done.relisted)
        for batch in batches(self.without_own(iter(done.events)), RECORD_BATCH):
            r = self.store.record(scan_id, batch)
            self.c.add("files_new", r.new)
            self.c.add("files_changed", r.changed)
            yield Step("scanning", f"{len(batch)} changed files")
        carry_forward(self.store, scan_id, self.roots, done.gone, done.gone_dirs)
        self.c.add("files_forgotten", self.store.finish_scan(scan_id, self.roots))
        yield from self.hash_and_act(scan_id)
        self._finish()


register("zfs")(ZfsPass)
