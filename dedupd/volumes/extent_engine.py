"""The extent engine: BTRFS and XFS volumes dedupe by sharing extents.

Size groups are hashed heads first, then whole files in on-disk order
(dedupd/hashing); each group of identical files goes to a worker thread that
runs dedup/extent_group.py (the kernel compares the bytes in FIDEDUPERANGE),
so reading and deduping overlap. Files in read-only snapshots are only ever
the reference of a dedupe. The engine measures the space a pass freed and
keeps the index lean (VACUUM, periodic re-verification of deduped files).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator

from dedupd.dedup.extent_group import ExtentDeduper
from dedupd.dedup.worker import DedupeWorker
from dedupd.files.counters import Counters
from dedupd.files.events import FileEvent
from dedupd.fsops.durable import sync_fd_filesystem
from dedupd.hashing import Hasher, HashWriter, Stability
from dedupd.index import extents as ix
from dedupd.volumes import Step
from dedupd.volumes import btrfs_ioctl as bt
from dedupd.volumes.btrfs import commit, meta_key
from dedupd.volumes.pipeline import Groups, PassRun

DAY = 86400.0


class ExtentEngine:
    """Extent dedupe for one pass (see the module docstring)."""

    def __init__(self, run: PassRun) -> None:
        self.run = run
        self.btrfs = run.vol.kind == "btrfs"
        # The deduper runs in a worker thread: it counts into its own Counters,
        # merged into the pass's at the end.
        self.deduper = ExtentDeduper(run.store, Counters(), run.vol.dedup_batch_size,
                                     run.vol.dedup_backend, run.dry, lambda f: run.readonly(f))
        self.free0 = 0
        self.started = 0.0

    def prepare(self) -> Iterator[Step]:
        """Nothing to recover: the kernel's dedupe is atomic."""
        yield from ()

    def start(self) -> None:
        self.started = time.time()
        self.free0 = self._free_bytes(commit_first=False)  # the source just committed

    def own(self, events: Iterator[FileEvent]) -> Iterator[FileEvent]:
        return events  # no temporary names of ours

    def hash_and_act(self, groups: Groups) -> Iterator[Step]:
        """Hash size groups (heads, then whole files in on-disk order: dedupd.hashing)
        and dedupe what matches in a worker thread, so reading and deduping overlap."""
        r = self.run
        stab = Stability(r.vol.settle_seconds, r.vol.max_backoff_hours * 3600)
        writer = HashWriter(r.store)
        worker = DedupeWorker(self.deduper)
        try:
            for res in Hasher(stab, r.hash_stats).run(groups):
                # Hashes of grouped files travel with the group: the deduper writes
                # them in order with what it learns (never overwritten by a stale one).
                writer.add(res, groups=False)
                if res.stats.pending:
                    r.again.add(res.size)  # unsettled: look again next pass
                yield Step("hashing", f"size {res.size}")
                for g in res.groups:
                    worker.submit(g)
                    yield Step("deduping", f"{len(g.files)} files of {res.size} bytes")
            writer.flush()
        finally:
            worker.close()

    def finish(self) -> None:
        r = self.run
        self.deduper.flush()
        for k, v in self.deduper.c.values.items():
            r.c.add(k, v)
        r.actions.extend(self.deduper.actions)
        r.problems.extend(self.deduper.problems)
        r.again |= self.deduper.retry_sizes  # the kernel found them differing
        self._measure()
        self._maintain()

    def after(self) -> None:
        """What `dedupd stats` shows about the last pass."""
        r = self.run
        r.store.set_meta(meta_key(r.vol, "last_pass"), json.dumps(
            {"at": self.started, "full": r.full_reason, "counters": r.c.values}))

    def close(self) -> None:
        """The worker is closed by hash_and_act."""

    def _free_bytes(self, commit_first: bool = True) -> int:
        """Free bytes after committing pending frees (BTRFS frees at transaction commit)."""
        root = self.run.roots[0]
        if self.btrfs:
            if commit_first:
                commit(self.run.vol, root)
        else:
            fd = bt.open_dir(root)
            try:  # this filesystem only (os has no syncfs); for a count: a failing
                with contextlib.suppress(OSError):  # sync (EIO) only makes it short
                    sync_fd_filesystem(fd)
            finally:
                os.close(fd)
        sv = os.statvfs(root)
        return sv.f_bfree * sv.f_frsize

    def _measure(self) -> None:
        r = self.run
        if r.dry or not r.c.values.get("hits"):
            return
        r.bytes_reclaimed = max(0, self._free_bytes() - self.free0)
        key = meta_key(r.vol, "bytes_reclaimed")
        total = int(r.store.get_meta(key) or 0) + r.bytes_reclaimed
        r.store.set_meta(key, str(total))

    def _maintain(self) -> None:
        """VACUUM/ANALYZE and the periodic re-verification of deduped files."""
        store, vol, now = self.run.store, self.run.vol, self.started
        k = meta_key(vol, "last_vacuum")
        last = float(store.get_meta(k) or 0)
        if last == 0:
            store.set_meta(k, repr(now))
        elif now - last >= vol.vacuum_interval_days * DAY:
            ix.maintain(store)
            store.set_meta(k, repr(now))
            self.run.c.add("vacuums")
        k = meta_key(vol, "last_reset")
        last = float(store.get_meta(k) or 0)
        if last == 0:
            store.set_meta(k, repr(now))
        elif now - last >= vol.dedup_reset_interval_days * DAY:
            cutoff = now - vol.dedup_reset_interval_days * DAY
            self.run.c.add("done_reset", ix.reset_done_before(store, cutoff))
            store.set_meta(k, repr(now))
