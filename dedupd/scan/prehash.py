"""Hashing that starts while the walk is still going: a feeder of the one engine.

A one-shot scan used to walk everything, then ask the index for the size
groups, then read. Instead, each recorded batch is handed to
`dedupd.hashing.Feeder` (the same rule, reader and read order as every volume
pass), which reads as soon as a second inode of some size is recorded. By
default the feeders run in FEED_PROCS forked processes (dedupd.hashing.forked),
so the walk and the index writer keep the interpreter to themselves;
FEED_PROCS = 0 runs one feeder in a thread of this process.

Memory is bounded: past PREHASH_LIMIT inodes held the feeders let go (hashes
already read stay in the index) and the scan falls back to the index's size
groups (close() returns None).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from dedupd.hashing import Feeder, Group, HashStats, HashWriter, Stability
from dedupd.hashing.forked import ForkedFeeders
from dedupd.index.store import IndexedFile, Store
from dedupd.queuethread import QueueThread

# Inodes held by all feeders together (each holds its share): a size met once
# costs one record, a shared one its group's maps too (about 600 bytes an inode).
# Past it, the scan falls back to the index (a 60,000-file tree must not).
PREHASH_LIMIT = 200_000
FEED_PROCS = 2  # one per core of the small boxes this runs on; the walk takes a third


class EarlyHashing:
    """put() takes the inodes of one recorded batch (from the record thread) and
    writes the hashes learnt so far; close() waits for the reads and returns the
    groups, or None when the feeders let go."""

    def __init__(self, store: Store, stability: Stability,
                 now: Callable[[], float] = time.time) -> None:
        self.writer = HashWriter(store)
        self.stats = HashStats()
        self.files = 0  # handed to the feeders so far
        self.procs: ForkedFeeders | None = None
        self.thread: QueueThread[Sequence[IndexedFile]] | None = None
        if FEED_PROCS:
            self.procs = ForkedFeeders(FEED_PROCS, stability, PREHASH_LIMIT // FEED_PROCS)
        else:
            self.feeder = Feeder(stability, PREHASH_LIMIT, now)
            self.thread = QueueThread(self._feed, "prehash", 4)

    def put(self, files: Sequence[IndexedFile]) -> None:
        self.files += len(files)
        if self.procs is not None:
            self.procs.put(files)
            self.writer.put(*self.procs.take())
        else:
            assert self.thread is not None
            self.thread.put(files)

    def _feed(self, files: Sequence[IndexedFile]) -> None:
        self.writer.put(*self.feeder.put(files))

    def close(self) -> list[Group] | None:
        """Wait for the reads; raise a feeder's error, if any; return the groups."""
        if self.procs is not None:
            groups, stats = self.procs.close()
            self.writer.put(*self.procs.take())
        else:
            assert self.thread is not None
            self.thread.close()
            groups = None if self.feeder.overflow else self.feeder.groups()
            stats = self.feeder.stats
        self.writer.flush()
        self.stats.merge(stats)
        return groups
