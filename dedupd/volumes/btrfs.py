"""BTRFS and XFS volumes: the change source that tracks BTRFS generations.

BTRFS: the first pass walks everything; later passes ask each subvolume's
tree for inodes whose inode item changed since the remembered transid (any
data or metadata change moves it) and look only at those (volumes/changes.py).
XFS has no generation numbers, so every pass walks (unchanged files are never
re-read: the index keeps their hashes). Both kinds pair this source with the
extent engine (volumes/extent_engine.py); read-only snapshots are never made
writable and never written to: their files can only be the reference of a
dedupe.

Caller contract: one pass per volume at a time (volumes/pipeline.py holds the
volume lock).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from dedupd.config import VolumeConfig
from dedupd.errors import ConfigError
from dedupd.files.events import FileEvent
from dedupd.index.store import IndexedFile
from dedupd.scan.walk import WalkOptions, walk
from dedupd.volumes import btrfs_ioctl as bt
from dedupd.volumes.changes import ChangeFinder, Subvol, full_walk
from dedupd.volumes.pipeline import Groups, PassRun


def meta_key(vol: VolumeConfig, what: str) -> str:
    return f"extent.{vol.name}.{what}"


def full_scan_reason(vol: VolumeConfig, prev_gen: int | None, gen: int,
                     last_full: float | None, now: float, force: bool) -> str | None:
    """Why this pass must walk everything, or None for an incremental pass.

    First run and --force-rescan always; a generation gap above
    max_generation_gap at most once per min_hours_between_full_scans; the
    scheduled scan at full_scan_hour once per day (not twice in that hour).
    """
    if force:
        return "forced"
    if prev_gen is None or last_full is None:
        return "first run"
    hours = (now - last_full) / 3600.0
    if gen - prev_gen > vol.max_generation_gap and hours >= vol.min_hours_between_full_scans:
        return "generation gap"
    if (vol.full_scan_hour is not None and time.localtime(now).tm_hour == vol.full_scan_hour
            and hours >= 1.0):
        return "scheduled"
    return None


@dataclass
class _State:
    gen: int | None
    last_full: float | None
    subvols: dict[int, Subvol]
    pending: set[int]


def commit(vol: VolumeConfig, root: bytes) -> int:
    """Commit the running transaction and return its transid (the pass's horizon)."""
    fd = bt.open_dir(root)
    try:
        # Dirty data first: BTRFS allocates its extents at writeback and updates
        # the inode then, in a later transaction, so a file written just before
        # this horizon would look changed to the next pass.
        bt.flush(fd)
        gen = bt.start_sync(fd)
        bt.wait_sync(fd, gen)
        return gen
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
            raise ConfigError("-", f"volumes.{vol.name}.kind",
                              f"btrfs, but {vol.path} is not on a BTRFS "
                              f"filesystem ({e.strerror})") from None
        raise
    finally:
        os.close(fd)


class Generations:
    """The change source of kinds btrfs and xfs (see the module docstring)."""

    def __init__(self, run: PassRun) -> None:
        self.run = run
        self.btrfs = run.vol.kind == "btrfs"
        self.finder = ChangeFinder(run.vol, run.c, run.walk_stats)
        self.state = _State(None, None, {}, set())
        self.gen: int | None = None
        self.started = 0.0
        self.changed: list[FileEvent] = []  # an incremental pass's events
        self.sizes: set[int] = set()  # sizes an incremental pass recorded
        run.readonly = self._readonly

    def _readonly(self, f: IndexedFile) -> bool:
        return self.finder.readonly(f.dev, f.path) if self.btrfs else False

    @property
    def root(self) -> bytes:
        return self.run.roots[0]

    def begin(self) -> None:
        r = self.run
        self.state = st = self._load_state()
        self.gen = gen = commit(r.vol, self.root) if self.btrfs else None  # commits frees too
        self.started = time.time()
        if self.btrfs and gen is not None and not self.finder.can_search(self.root):
            r.full_reason = "generation tracking needs CAP_SYS_ADMIN (root)"
            self.gen = None  # nothing to remember: every pass walks
        elif self.btrfs and gen is not None:
            r.full_reason = full_scan_reason(r.vol, st.gen, gen, st.last_full, self.started,
                                             r.opts.force_rescan)
        else:
            r.full_reason = "no generations (xfs)"
        self.finder.subvols = {} if r.full_reason is not None else dict(st.subvols)

    def open_scan(self) -> int:
        if self.run.full_reason is not None:
            self.run.c.add("full_scans")
        return self.run.store.begin_scan(self.run.roots)

    def events(self) -> Iterator[FileEvent]:
        r = self.run
        if r.full_reason is not None:
            # on BTRFS read-only snapshots are walked only with dedup_snapshots
            if self.btrfs:
                return full_walk(self.finder, self.root)
            opts = WalkOptions(r.vol.min_size, r.vol.exclude, r.vol.cross_mounts)
            return walk(r.roots, opts, r.walk_stats)
        self.changed = self.finder.incremental(r.store, self.root, self.state.gen or 0)
        return self._sized(self.changed)

    def _sized(self, events: list[FileEvent]) -> Iterator[FileEvent]:
        for e in events:
            if e.size >= self.run.vol.min_size:
                self.sizes.add(e.size)
            yield e

    def progress(self, batch: list[FileEvent]) -> str:
        if self.run.full_reason is not None:
            return f"{self.run.walk_stats.files_seen} files"
        return f"{len(self.sizes)} sizes changed"

    def close_scan(self, scan_id: int) -> Groups:
        r = self.run
        if r.full_reason is not None:
            r.c.add("files_examined", r.walk_stats.files_seen)
            r.c.add("files_forgotten", r.store.finish_scan(scan_id, r.roots))
            return r.store.candidate_groups(scan_id, r.vol.min_size)
        r.c.add("files_examined", len(self.changed))
        r.c.add("files_forgotten", self.finder.forgotten)
        _, groups = r.store.finish_incremental(scan_id, r.roots,
                                               sizes=self.sizes | self.state.pending)
        return groups

    def _load_state(self) -> _State:
        store, vol = self.run.store, self.run.vol
        g = store.get_meta(meta_key(vol, "gen"))
        lf = store.get_meta(meta_key(vol, "last_full_scan"))
        raw = store.get_meta(meta_key(vol, "subvols"))
        subvols = {int(k): Subvol.from_json(int(k), v) for k, v in json.loads(raw or "{}").items()}
        pending = set(json.loads(store.get_meta(meta_key(vol, "pending")) or "[]"))
        return _State(int(g) if g else None, float(lf) if lf else None, subvols, pending)

    def save(self) -> None:
        """Advance the change horizon. Never in dry-run: the next real pass must see the
        same changes again, or the groups this pass only described would be lost."""
        r = self.run
        if r.dry:
            return
        if r.full_reason is not None:
            r.store.set_meta(meta_key(r.vol, "last_full_scan"), repr(self.started))
        if self.gen is not None:
            r.store.set_meta(meta_key(r.vol, "gen"), str(self.gen))
            doc = {str(k): v.as_json() for k, v in self.finder.subvols.items()}
            r.store.set_meta(meta_key(r.vol, "subvols"), json.dumps(doc))
            # Sizes to hash again although nothing changes: files still settling
            # (their inodes will not change again) and files the kernel found differing.
            r.store.set_meta(meta_key(r.vol, "pending"), json.dumps(sorted(r.again)))
