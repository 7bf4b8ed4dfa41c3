"""BTRFS and XFS volumes: change tracking and extent dedupe.

BTRFS: the first pass walks everything; later passes ask each subvolume's
tree for inodes whose inode item changed since the remembered transid (any
data or metadata change moves it) and look only at those. XFS has no
generation numbers, so every pass walks (unchanged files are never re-read:
the index keeps their hashes). Both dedupe by sharing extents
(dedupd.dedup.extent_group); read-only snapshots are never made writable and
never written to: their files can only be the reference of a dedupe.

Caller contract: one pass per volume at a time (steps() takes the volume lock,
dedupd.dedup.lock).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from dedupd.config import VolumeConfig
from dedupd.dedup.extent_group import ExtentDeduper
from dedupd.dedup.lock import lock_root, volume_lock
from dedupd.dedup.route import Router
from dedupd.dedup.worker import DedupeWorker
from dedupd.errors import ConfigError, TemporaryFailure
from dedupd.hashing import HashWriter, SizeGroupResult, Stability
from dedupd.index import extents as ix
from dedupd.index.store import IndexedFile, Store
from dedupd.scan.events import FileEvent
from dedupd.scan.scanner import RECORD_BATCH, DupGroup, batches
from dedupd.volumes import Counters, PassOptions, Step, register
from dedupd.volumes import btrfs_ioctl as bt
from dedupd.volumes._base import ScanPass
from dedupd.volumes.changes import ChangeFinder, Subvol, full_walk

DAY = 86400.0


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


@register("btrfs", "xfs")
class ExtentPass(ScanPass):
    """A pass over a BTRFS or XFS volume (see the module docstring)."""

    def __init__(self, vol: VolumeConfig, store: Store, opts: PassOptions) -> None:
        super().__init__(vol, store, opts)
        self.btrfs = vol.kind == "btrfs"
        self.dry = opts.dry_run or not vol.apply
        self.finder = ChangeFinder(vol, self.c, self.walk_stats)
        # The deduper runs in a worker thread: it counts into its own Counters,
        # merged into the pass's at the end.
        self.deduper = ExtentDeduper(store, Counters(), vol.dedup_batch_size, vol.dedup_backend,
                                     self.dry, self._readonly)
        self.full_reason: str | None = None
        self.pending: set[int] = set()  # sizes with files not settled yet

    def _readonly(self, f: IndexedFile) -> bool:
        return self.finder.readonly(f.dev, f.path) if self.btrfs else False

    def changed_files(self) -> Iterator[FileEvent]:
        """Full walk; on BTRFS read-only snapshots are walked only with dedup_snapshots."""
        if self.btrfs:
            return full_walk(self.finder, self.roots[0])
        return super().changed_files()

    def steps(self) -> Iterator[Step]:
        if not os.path.isdir(self.vol.path):
            raise TemporaryFailure(f"volume {self.vol.name}: {self.vol.path} is not a "
                                   "directory (not mounted yet?)")
        # The same per-volume lock as every other kind and `dedupd recover`.
        with volume_lock(lock_root(self.vol.kind, self.vol.path, self.vol.branches)):
            yield from self._steps()

    def _steps(self) -> Iterator[Step]:
        st = self._load_state()
        gen = self._sync() if self.btrfs else None  # also commits pending frees
        free0 = self._free_bytes(commit=False)
        now = time.time()
        if self.btrfs and gen is not None and not self.finder.can_search(self.roots[0]):
            self.full_reason = "generation tracking needs CAP_SYS_ADMIN (root)"
            gen = None  # nothing to remember: every pass walks
        elif self.btrfs and gen is not None:
            self.full_reason = full_scan_reason(self.vol, st.gen, gen, st.last_full, now,
                                                self.opts.force_rescan)
        else:
            self.full_reason = "no generations (xfs)"
        if self.full_reason is not None:
            self.finder.subvols = {}
            yield from self._full_pass()
        else:
            self.finder.subvols = dict(st.subvols)
            yield from self._incremental_pass(st.gen or 0, st.pending)
        self.deduper.flush()
        self._collect()
        self._measure(free0)
        self._save_state(gen, now)
        self._maintain(now)
        self.c.add("files_seen", self.walk_stats.files_seen)
        self._finish()
        self.store.set_meta(meta_key(self.vol, "last_pass"), json.dumps(
            {"at": now, "full": self.full_reason, "counters": self.c.values}))

    def _full_pass(self) -> Iterator[Step]:
        self.c.add("full_scans")
        scan_id = self.store.begin_scan(self.roots)
        for batch in batches(self.changed_files(), RECORD_BATCH):
            self._record(scan_id, batch)
            yield Step("scanning", f"{self.walk_stats.files_seen} files")
        self.c.add("files_examined", self.walk_stats.files_seen)
        self.c.add("files_forgotten", self.store.finish_scan(scan_id, self.roots))
        yield from self._hash_groups(self.store.candidate_groups(scan_id, self.vol.min_size))

    def _incremental_pass(self, prev_gen: int, st_pending: set[int]) -> Iterator[Step]:
        scan_id = self.store.begin_scan(self.roots)
        events = self.finder.incremental(self.store, self.roots[0], prev_gen)
        sizes: set[int] = set()
        for batch in batches(iter(events), RECORD_BATCH):
            self._record(scan_id, batch)
            sizes.update(e.size for e in batch if e.size >= self.vol.min_size)
            yield Step("scanning", f"{len(sizes)} sizes changed")
        self.c.add("files_examined", len(events))
        self.c.add("files_forgotten", self.finder.forgotten)
        ix.finish_incremental(self.store, scan_id)
        sizes.update(st_pending)
        yield from self._hash_sizes(sorted(sizes))

    def _record(self, scan_id: int, batch: list[FileEvent]) -> None:
        r = self.store.record(scan_id, batch)
        self.c.add("files_new", r.new)
        self.c.add("files_changed", r.changed)
        self.c.add("files_unchanged", r.unchanged)

    def _hash_sizes(self, sizes: list[int]) -> Iterator[Step]:
        yield from self._hash_groups(ix.files_of_sizes(self.store, sizes, self.roots))

    def _hash_groups(self, groups: Iterator[list[IndexedFile]]) -> Iterator[Step]:
        """Hash size groups (heads, then whole files in on-disk order: dedupd.dedup.route)
        and dedupe what matches in a worker thread, so reading and deduping overlap."""
        stab = Stability(self.vol.settle_seconds, self.vol.max_backoff_hours * 3600)
        router = Router(stab, self.hash_stats)
        writer = HashWriter(self.store)
        self.worker = DedupeWorker(self.deduper)
        try:
            for res in router.route(groups):
                # Hashes of grouped files travel with the group: the deduper writes
                # them in order with what it learns (never overwritten by a stale one).
                writer.add(SizeGroupResult(res.updates, (), res.gone, res.stats))
                if res.stats.pending:
                    self.pending.add(res.size)  # unsettled: look again next pass
                yield Step("hashing", f"size {res.size}")
                for g in res.groups:
                    self.worker.submit(g)
                    yield Step("deduping", f"{len(g.files)} files of {res.size} bytes")
            writer.flush()
        finally:
            self.worker.close()

    def act(self, group: DupGroup) -> Iterator[Step]:
        self.deduper.dedupe_group(group.size, group.files)
        yield Step("deduping", f"{len(group.files)} files of {group.size} bytes")

    # --- state, measurement, maintenance ---

    def _sync(self) -> int | None:
        """Commit the running transaction and return its transid (the pass's horizon)."""
        fd = bt.open_dir(self.roots[0])
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
                raise ConfigError("-", f"volumes.{self.vol.name}.kind",
                                  f"btrfs, but {self.vol.path} is not on a BTRFS "
                                  f"filesystem ({e.strerror})") from None
            raise
        finally:
            os.close(fd)

    def _free_bytes(self, commit: bool = True) -> int:
        """Free bytes after committing pending frees (BTRFS frees at transaction commit)."""
        if self.btrfs:
            if commit:
                self._sync()
        else:
            fd = bt.open_dir(self.roots[0])
            try:
                os.syncfs(fd) if hasattr(os, "syncfs") else os.sync()
            finally:
                os.close(fd)
        sv = os.statvfs(self.roots[0])
        return sv.f_bfree * sv.f_frsize

    def _measure(self, free0: int) -> None:
        if self.dry or not self.c.values.get("hits"):
            return
        self.bytes_reclaimed = max(0, self._free_bytes() - free0)
        key = meta_key(self.vol, "bytes_reclaimed")
        total = int(self.store.get_meta(key) or 0) + self.bytes_reclaimed
        self.store.set_meta(key, str(total))

    def _load_state(self) -> _State:
        g = self.store.get_meta(meta_key(self.vol, "gen"))
        lf = self.store.get_meta(meta_key(self.vol, "last_full_scan"))
        raw = self.store.get_meta(meta_key(self.vol, "subvols"))
        subvols = {int(k): Subvol.from_json(int(k), v) for k, v in json.loads(raw or "{}").items()}
        pending = set(json.loads(self.store.get_meta(meta_key(self.vol, "pending")) or "[]"))
        return _State(int(g) if g else None, float(lf) if lf else None, subvols, pending)

    def _save_state(self, gen: int | None, started: float) -> None:
        """Advance the change horizon. Never in dry-run: the next real pass must see the
        same changes again, or the groups this pass only described would be lost."""
        if self.dry:
            return
        if self.full_reason is not None:
            self.store.set_meta(meta_key(self.vol, "last_full_scan"), repr(started))
        if gen is not None:
            self.store.set_meta(meta_key(self.vol, "gen"), str(gen))
            doc = {str(k): v.as_json() for k, v in self.finder.subvols.items()}
            self.store.set_meta(meta_key(self.vol, "subvols"), json.dumps(doc))
            # Sizes to hash again although nothing changes: files still settling
            # (their inodes will not change again) and files the kernel found differing.
            again = sorted(self.pending | self.deduper.retry_sizes)
            self.store.set_meta(meta_key(self.vol, "pending"), json.dumps(again))

    def _maintain(self, now: float) -> None:
        """VACUUM/ANALYZE and the periodic re-verification of deduped files."""
        k = meta_key(self.vol, "last_vacuum")
        last = float(self.store.get_meta(k) or 0)
        if last == 0:
            self.store.set_meta(k, repr(now))
        elif now - last >= self.vol.vacuum_interval_days * DAY:
            ix.maintain(self.store)
            self.store.set_meta(k, repr(now))
            self.c.add("vacuums")
        k = meta_key(self.vol, "last_reset")
        last = float(self.store.get_meta(k) or 0)
        if last == 0:
            self.store.set_meta(k, repr(now))
        elif now - last >= self.vol.dedup_reset_interval_days * DAY:
            cutoff = now - self.vol.dedup_reset_interval_days * DAY
            self.c.add("done_reset", ix.reset_done_before(self.store, cutoff))
            self.store.set_meta(k, repr(now))

    def _collect(self) -> None:
        for k, v in self.deduper.c.values.items():
            self.c.add(k, v)
        self.actions.extend(self.deduper.actions)
        self.problems.extend(self.deduper.problems)
