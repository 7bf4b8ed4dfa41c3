"""Hashing counters and the settle rule (when a recently changed file may be read)."""

from __future__ import annotations

from dedupd.files.events import Problem
from dedupd.index.store import IndexedFile
from dedupd.tuples import NamedTuple  # typing's class syntax, built ~10x faster (tuples.py)

# No dataclasses here: every `dedupd scan` imports this module, and an unchanged
# rescan imports nothing else that needs the dataclasses module (with inspect, ast
# and dis: ~10 ms of its CPU, with the classes it builds).


class HashStats:
    """A pass's hashing counters (mutable: added to as it reads)."""

    __slots__ = ("files_hashed", "full_hashes", "bytes_hashed", "bytes_read", "pending",
                 "pending_first", "pending_last", "problems")

    def __init__(self, files_hashed: int = 0, full_hashes: int = 0, bytes_hashed: int = 0,
                 bytes_read: int = 0, pending: int = 0, pending_first: float = 0.0,
                 pending_last: float = 0.0, problems: list[Problem] | None = None) -> None:
        self.files_hashed = files_hashed  # files read at all (head or full)
        self.full_hashes = full_hashes
        self.bytes_hashed = bytes_hashed  # bytes covered by full-file hashes
        self.bytes_read = bytes_read  # every byte read from file data
        self.pending = pending  # not settled yet: left for a later pass
        # when the first and the last of the pending files settle (epoch seconds; 0: none)
        self.pending_first = pending_first
        self.pending_last = pending_last
        self.problems: list[Problem] = [] if problems is None else problems

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is HashStats and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass was

    def __repr__(self) -> str:
        return "HashStats(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"

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


class Stability(NamedTuple):
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
