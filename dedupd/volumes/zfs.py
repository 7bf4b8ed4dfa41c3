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

This is the change source of kind "zfs" (volumes/pipeline.py); its engine is
the hardlink engine (volumes/link_engine.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from dedupd import proc
from dedupd.files.events import FileEvent
from dedupd.files.mounts import Mount, mounts_below
from dedupd.scan.walk import WalkOptions
from dedupd.volumes.pipeline import ChangeSource, Groups, PassRun
from dedupd.volumes.walk_source import FullWalk
from dedupd.volumes.zfs_diff import DiffEntry
from dedupd.volumes.zfs_mounts import dataset_for, snapdir_excludes
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


class ZfsSnapshots:
    """Changes from `zfs diff` between pass snapshots; a full walk where the diff
    cannot be used (see the module docstring)."""

    def __init__(self, run: PassRun) -> None:
        self.run = run
        self.meta_key = f"zfs_pass_snapshot:{run.vol.name}"
        self.datasets: list[Mount] = []  # mounted datasets the walk may reach
        self.inner: ChangeSource = FullWalk(run)
        self.walked = True  # this pass walks the whole tree
        self.old: list[str] = []
        self.new: str | None = None  # this pass's snapshot; None: none taken
        self.dataset = ""

    def walk_options(self) -> WalkOptions:
        vol = self.run.vol
        return WalkOptions(vol.min_size, vol.exclude + snapdir_excludes(self.datasets),
                           vol.cross_mounts)

    def begin(self) -> None:
        r = self.run
        mnt = dataset_for(r.vol.path)
        self.dataset = mnt.dataset
        below = mounts_below(r.roots[0]) if r.vol.cross_mounts else []
        self.datasets = [mnt, *(m for m in below if m.is_zfs)]
        self.inner = FullWalk(r, self.walk_options())
        self.old = pass_snapshots(self.dataset)
        if not has_diff() or below:
            # The diff of one dataset cannot see other mounts the walk enters.
            r.c.add("zfs_diff_unavailable" if not below else "zfs_walk_child_mounts")
            r.c.add("zfs_full_walks")
            return  # a stat walk, nothing pinned
        self.new = f"{self.dataset}@{PASS_PREFIX}" \
                   f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}" \
                   f"{time.time_ns() % 10**6:06d}Z"
        if not r.dry:
            proc.run(["zfs", "snapshot", self.new], timeout=300)
        prev = r.store.get_meta(self.meta_key)
        diff = None
        why = self._walk_reason(prev, self.old)
        if why is None:
            diff = self._diff(str(prev), self.new)
        else:
            r.c.add(why)
        if diff is not None:
            self.inner, self.walked = DiffChanges(r, diff, self.walk_options()), False
        else:
            r.c.add("zfs_full_walks")

    def _walk_reason(self, prev: str | None, old: list[str]) -> str | None:
        """Why this pass walks the whole tree instead of reading the diff (a counter
        name), or None when the diff can be used."""
        r = self.run
        if r.dry:
            return "zfs_walk_dry_run"  # a dry run takes no snapshot to diff against
        if r.opts.force_rescan:
            return "zfs_walk_forced"
        if prev not in old:
            return "zfs_walk_no_base"
        last = float(r.store.get_meta(f"zfs_full_walk:{r.vol.name}") or 0)
        if time.time() - last >= r.vol.zfs_full_walk_days * 86400:
            return "zfs_walk_scheduled"
        return None

    def _diff(self, prev: str, new: str) -> list[DiffEntry] | None:
        """Changes prev -> new, or None (then the pass walks) if zfs diff fails or
        its output is incomplete."""
        res = run_diff(prev, new)
        if res.entries is None:
            reason = "zfs_diff_incomplete" if res.incomplete else "zfs_diff_failed"
            log.warning("%s: %s; walking the tree instead", self.run.vol.name, res.problem)
            self.run.problem(reason, f"{res.problem}; walked the tree instead")
            self.run.c.add(f"skips_{reason}")
            return None
        return list(res.entries)

    def open_scan(self) -> int:
        return self.inner.open_scan()

    def events(self) -> Iterator[FileEvent]:
        return self.inner.events()

    def progress(self, batch: list[FileEvent]) -> str:
        return self.inner.progress(batch)

    def close_scan(self, scan_id: int) -> Groups:
        return self.inner.close_scan(scan_id)

    def save(self) -> None:
        """Remember this pass's snapshot (and when the tree was last walked whole);
        release the older snapshots. Not in dry-run."""
        r = self.run
        if r.dry:
            return
        if self.walked:
            r.store.set_meta(f"zfs_full_walk:{r.vol.name}", str(time.time()))
        if self.new is None:
            self._release(self.old, None)
            return
        r.store.set_meta(self.meta_key, self.new)
        self._release(pass_snapshots(self.dataset), self.new)

    def _release(self, snaps: list[str], keep: str | None) -> None:
        for p in release(snaps, keep):
            self.run.problem("snapshot_held", p)


class DiffChanges:
    """Record what `zfs diff` lists, reconciled with the index (zfs_track): the
    changed files and re-listed directories are recorded, what is gone is
    carried out of the index."""

    def __init__(self, run: PassRun, entries: list[DiffEntry],
                 options: WalkOptions | None = None) -> None:
        self.run, self.entries = run, entries
        vol = run.vol
        self.options = options or WalkOptions(vol.min_size, vol.exclude, vol.cross_mounts)
        self.gone: set[bytes] = set()
        self.gone_dirs: tuple[bytes, ...] = ()

    def begin(self) -> None:
        """The snapshots are ZfsSnapshots' business."""

    def open_scan(self) -> int:
        self.run.c.add("zfs_diff_entries", len(self.entries))
        return self.run.store.begin_scan(self.run.roots)

    def events(self) -> Iterator[FileEvent]:
        r = self.run
        rec = Reconciler(r.store, r.roots, self.options, r.walk_stats)
        done = rec.apply(plan(self.entries))
        r.c.add("zfs_dirs_relisted", done.relisted)
        self.gone, self.gone_dirs = set(done.gone), tuple(done.gone_dirs)
        return iter(done.events)

    def progress(self, batch: list[FileEvent]) -> str:
        return f"{len(batch)} changed files"

    def close_scan(self, scan_id: int) -> Groups:
        r = self.run
        n, groups = r.store.finish_incremental(scan_id, r.roots, sorted(self.gone),
                                               self.gone_dirs, None, r.vol.min_size)
        r.c.add("files_forgotten", n)
        return groups

    def save(self) -> None:
        """The snapshots are ZfsSnapshots' business."""
