"""ScanPass: the shared shape of a volume pass (walk -> index -> hash -> act).

Kinds subclass it and override `changed_files` (how to find what changed: a
full walk here; BTRFS generations, ZFS snapshots elsewhere) and `act` (what to
do with one verified-by-hash group: extent dedupe, hardlink, cross-drive link).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from dedupd.config import VolumeConfig
from dedupd.hashing import Hasher, HashStats, HashWriter, Stability
from dedupd.index.store import Store
from dedupd.scan.events import FileEvent, WalkStats
from dedupd.scan.scanner import RECORD_BATCH, DupGroup, batches
from dedupd.scan.walk import WalkOptions, normalize_roots, walk
from dedupd.volumes import Counters, PassOptions, PassReport, Step


class ScanPass:
    """A full-walk pass that reports groups; subclasses decide what to do with them."""

    def __init__(self, vol: VolumeConfig, store: Store, opts: PassOptions) -> None:
        self.vol, self.store, self.opts = vol, store, opts
        self.c = Counters()
        self.actions: list[dict[str, object]] = []
        self.problems: list[dict[str, str]] = []
        self.bytes_reclaimed = 0
        self.walk_stats = WalkStats()
        self.hash_stats = HashStats()
        self._t0 = time.monotonic()
        self._seconds = 0.0

    @property
    def counters(self) -> dict[str, int]:
        return self.c.values

    @property
    def roots(self) -> list[bytes]:
        return normalize_roots([self.vol.path])

    def changed_files(self) -> Iterator[FileEvent]:
        """Every regular file of the volume (override for incremental change tracking)."""
        opts = WalkOptions(self.vol.min_size, self.vol.exclude, self.vol.cross_mounts)
        return walk(self.roots, opts, self.walk_stats)

    def steps(self) -> Iterator[Step]:
        scan_id = self.store.begin_scan(self.roots)
        for batch in batches(self.changed_files(), RECORD_BATCH):
            r = self.store.record(scan_id, batch)
            self.c.add("files_new", r.new)
            self.c.add("files_changed", r.changed)
            self.c.add("files_unchanged", r.unchanged)
            yield Step("scanning", f"{self.walk_stats.files_seen} files")
        self.c.add("files_seen", self.walk_stats.files_seen)
        self.c.add("files_forgotten", self.store.finish_scan(scan_id, self.roots))
        yield from self.hash_and_act(scan_id)
        self._finish()

    def hash_and_act(self, scan_id: int) -> Iterator[Step]:
        stab = Stability(self.vol.settle_seconds, self.vol.max_backoff_hours * 3600)
        hasher = Hasher(stab, self.hash_stats)
        writer = HashWriter(self.store)
        for files, res in hasher.hash_groups(
                self.store.candidate_groups(scan_id, self.vol.min_size)):
            writer.add(res)
            yield Step("hashing", f"size {files[0].size}")
            if res.groups:
                writer.flush()  # act on groups whose hashes the index already holds
            for g in res.groups:
                self.c.add("groups")
                yield from self.act(DupGroup(files[0].size, g))
        writer.flush()

    def act(self, group: DupGroup) -> Iterator[Step]:
        """Do (or, in dry-run, describe) the dedupe of one group. Default: report it."""
        self.actions.append({"action": "report", "size": group.size,
                             "paths": [f.path.decode("utf-8", "surrogateescape")
                                       for f in group.files]})
        yield Step("deduping", f"{len(group.files)} files")

    def _finish(self) -> None:
        hs = self.hash_stats
        self.c.add("files_hashed", hs.files_hashed)
        self.c.add("bytes_read", hs.bytes_read)
        self.c.add("files_pending", hs.pending)
        for p in self.walk_stats.problems + hs.problems:
            self.problems.append(p.as_dict())
            self.c.add(f"skips_{p.reason}")
        self._seconds = time.monotonic() - self._t0

    def report(self) -> PassReport:
        hs = self.hash_stats
        return PassReport(self.vol.name, self.vol.kind, self.opts.dry_run or not self.vol.apply,
                          self._seconds, dict(self.c.values), tuple(self.actions),
                          tuple(self.problems), self.bytes_reclaimed, self.vol.settle_seconds,
                          hs.pending_first, hs.pending_last)
