"""Split size groups into dedupe groups for extent volumes, reading as little as possible.

An extent dedupe needs no full-file hash to be safe: FIDEDUPERANGE locks both
ranges and compares them byte for byte, and refuses ("differs") where they are
not equal. So after the head hash (one 4 KiB read per file) a group of files
of equal size and head whose full hashes are all unknown goes to the kernel as
it is ("unverified"): the kernel reads every byte once while comparing, where
hashing first would read everything twice on a cold cache. The deduper hashes
the reference, gives the destinations the kernel found equal (and FIEMAP
confirms sharing) the reference's hash, and full-hashes only the files the
kernel refused, to regroup them (dedupd.dedup.extent_group).

Groups where some full hashes are known already (a new copy of a file deduped
before) are full-hashed as usual, so they meet their remembered reference.
Small files are read whole in one go, as the foundation's Hasher does.
"""

from __future__ import annotations

import errno
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from dedupd.hashing import WHOLE_READ, FileChanged, HashStats, Stability, read_hashes
from dedupd.index.store import HashUpdate, IndexedFile
from dedupd.scan.events import Problem

Key = tuple[int, int]


@dataclass(frozen=True)
class Group:
    """Files to dedupe together. full is their common hash, or None when only size and
    head are known to match (the kernel's compare decides)."""

    size: int
    files: tuple[IndexedFile, ...]
    full: bytes | None
    updates: tuple[HashUpdate, ...]  # new hashes of these files: the deduper writes them


@dataclass(frozen=True)
class Routed:
    """One size group: the hash updates of files in no group, vanished inodes, groups."""

    size: int
    updates: tuple[HashUpdate, ...]
    gone: tuple[Key, ...]
    groups: tuple[Group, ...]
    stats: HashStats = field(default_factory=HashStats)


class Router:
    """Routes size groups (in parallel threads, results in order, like Hasher)."""

    def __init__(self, stability: Stability, stats: HashStats, kernel_verify: bool = True,
                 workers: int = 4, now: Callable[[], float] | None = None) -> None:
        import time

        self.stability = stability
        self.stats = stats
        self.kernel_verify = kernel_verify
        self.workers = workers
        self.now = now or time.time

    def route(self, groups: Iterable[list[IndexedFile]]) -> Iterator[Routed]:
        """route_one over groups, in order, at most 2*workers groups in flight; counters
        are merged into `stats` in the caller's thread."""
        window: deque[Future[Routed]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="route") as pool:
            for files in groups:
                window.append(pool.submit(self.route_one, files))
                if len(window) >= 2 * self.workers:
                    yield self._done(window.popleft())
            while window:
                yield self._done(window.popleft())

    def _done(self, fut: Future[Routed]) -> Routed:
        r = fut.result()
        self.stats.merge(r.stats)
        return r

    def route_one(self, files: list[IndexedFile]) -> Routed:
        """Head-hash one size group and split it; thread-safe (counters in the result)."""
        rd = _Reader(HashStats())
        ready = [f for f in files if self.stability.ready(f, self.now())]
        rd.stats.pending = len(files) - len(ready)
        size = files[0].size if files else 0
        if len(ready) < 2:
            return Routed(size, (), (), (), rd.stats)
        small = size <= WHOLE_READ
        heads: dict[int, list[IndexedFile]] = defaultdict(list)
        for f in ready:
            got: IndexedFile | None = f
            if f.head is None or (small and f.full is None):
                got = rd.read(f, full=small)
            if got is not None and got.head is not None:
                heads[got.head].append(got)
        groups: list[Group] = []
        for same in heads.values():
            if len(same) >= 2:
                groups.extend(self._split(size, same, rd))
        grouped = {f.key for g in groups for f in g.files}
        loose = tuple(u for k, u in rd.updates.items() if k not in grouped)
        out = tuple(Group(g.size, g.files, g.full,
                          tuple(rd.updates[f.key] for f in g.files if f.key in rd.updates))
                    for g in groups)
        return Routed(size, loose, tuple(rd.gone), out, rd.stats)

    def _split(self, size: int, same_head: list[IndexedFile], rd: _Reader) -> list[Group]:
        if self.kernel_verify and all(f.full is None for f in same_head):
            return [Group(size, tuple(same_head), None, ())]
        fulls: dict[bytes, list[IndexedFile]] = defaultdict(list)
        for f in same_head:
            got = rd.read(f, full=True) if f.full is None else f
            if got is not None and got.full is not None:
                fulls[got.full].append(got)
        return [Group(size, tuple(g), full, ()) for full, g in fulls.items() if len(g) >= 2]


class _Reader:
    """Reads hashes for one size group, turning failures into Problems."""

    def __init__(self, stats: HashStats) -> None:
        self.stats = stats
        self.updates: dict[Key, HashUpdate] = {}
        self.gone: list[Key] = []
        self.counted: set[Key] = set()

    def read(self, f: IndexedFile, full: bool) -> IndexedFile | None:
        """f with its head (and full hash, when asked) filled in; None if unreadable."""
        got = hash_file(f, full, self.stats, self.counted)
        if isinstance(got, Problem):
            if got.reason in ("changed", "vanished"):
                self.gone.append(f.key)
            return None
        head, digest = got
        self.updates[f.key] = HashUpdate(f.dev, f.ino, head, digest)
        return with_hashes(f, head, digest)


def hash_file(f: IndexedFile, full: bool, stats: HashStats,
              counted: set[Key]) -> tuple[int, bytes | None] | Problem:
    """read_hashes with failures as a Problem (also appended to stats.problems)."""
    if f.key not in counted:
        counted.add(f.key)
        stats.files_hashed += 1
    try:
        return read_hashes(f, full, stats)
    except FileChanged:
        p = Problem(f.path, "changed", "changed while being read")
    except FileNotFoundError:
        p = Problem(f.path, "vanished", "disappeared before hashing")
    except OSError as e:
        reason = "unreadable" if e.errno in (errno.EACCES, errno.EPERM) else "error"
        p = Problem(f.path, reason, e.strerror or str(e))
    stats.problems.append(p)
    return p


def with_hashes(f: IndexedFile, head: int, full: bytes | None) -> IndexedFile:
    return IndexedFile(f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, head,
                       full if full is not None else f.full, f.unstable, f.paths)
