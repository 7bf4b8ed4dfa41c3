"""Hashing counters and the settle rule (when a recently changed file may be read)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dedupd.files.events import Problem
from dedupd.index.store import IndexedFile


@dataclass
class HashStats:
    files_hashed: int = 0  # files read at all (head or full)
    full_hashes: int = 0
    bytes_hashed: int = 0  # bytes covered by full-file hashes
    bytes_read: int = 0  # every byte read from file data
    pending: int = 0  # not settled yet: left for a later pass
    # when the first and the last of the pending files settle (epoch seconds; 0: none)
    pending_first: float = 0.0
    pending_last: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    def wait_until(self, t: float) -> None:
        """Count one pending file that settles at t."""
        self.pending += 1
        self.pending_first = min(self.pending_first or t, t)
        self.pending_last = max(self.pending_last, t)

    def merge(self, other: HashStats) -> None:
        self.files_hashed += other.files_hashed
        self.full_hashes += other.full_hashes
        self.bytes_hashed += other.bytes_hashed
        self.bytes_read += other.bytes_read
        self.pending += other.pending
        if other.pending_first:
            self.pending_first = min(self.pending_first or other.pending_first,
                                     other.pending_first)
        self.pending_last = max(self.pending_last, other.pending_last)
        self.problems.extend(other.problems)


@dataclass(frozen=True)
class Stability:
    """When a recently changed file may be hashed.

    A file waits settle_seconds after its last change; each pass that finds it
    changed again doubles the wait, up to max_backoff_seconds.
    """

    settle_seconds: float = 0.0
    max_backoff_seconds: float = 72 * 3600.0

    def ready(self, f: IndexedFile, now: float) -> bool:
        if self.settle_seconds <= 0:
            return True
        return bool(now >= self.ready_at(f))

    def ready_at(self, f: IndexedFile) -> float:
        """When f will have settled (epoch seconds), if it does not change again."""
        wait = min(self.settle_seconds * 2.0 ** min(f.unstable, 30), self.max_backoff_seconds)
        return max(f.mtime_ns, f.ctime_ns) / 1e9 + wait

    def split(self, files: list[IndexedFile], now: float, stats: HashStats
              ) -> list[IndexedFile]:
        """The files settled at `now`; the others are counted pending in stats, with
        when they settle (the summary tells the user when a pass will take them)."""
        if self.settle_seconds <= 0:
            return files
        ready = []
        for f in files:
            t = self.ready_at(f)
            if now >= t:
                ready.append(f)
            else:
                stats.wait_until(t)
        return ready
