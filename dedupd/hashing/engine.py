"""The hashing engine: schedules the reads the rule (dedupd.hashing.rule) asks for.

Reads go in two stages, for every kind. Stage 1, the first read of each file
(a head, or a small file whole), runs over batches of size groups in inode
order: files written one after the other lie on disk in about that order too.
Stage 2, the whole reads of large files whose heads collide, is collected into
windows of about WINDOW_BYTES and read in the order of each file's first block
on disk (FIEMAP). On a cold cache this is where the time goes: the same reads
in size order seek back and forth (originals and their copies lie far apart),
while in disk order the readahead of the filesystem and of the device below it
work in long runs. A size group is handed on (`Hashed`) as soon as its last
read is done, so acting on the first groups overlaps the reads of the next,
and finds the bytes it compares in the page cache.

`Hasher.run` takes complete size groups (from the index); `Feeder` takes the
members of many sizes batch by batch as a walk records them (the scan's early
hashing) and applies the same rule and the same order to each batch. A Feeder
first tries each stage's reads directory by directory from the page cache
(read.read_warm: on a warm cache the order costs nothing, and each directory is
resolved once); what that does not answer goes the inode (disk) order way.
"""

from __future__ import annotations

import os
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from dedupd.files.events import Problem
from dedupd.hashing.read import (
    COLD_MISSES,
    Dirs,
    Got,
    cacheable,
    on_disk,
    open_ahead,
    read_cached,
    read_one,
    read_warm,
)
from dedupd.hashing.rule import Group, Hashed, Key, Read, Sink, SizeGroup
from dedupd.hashing.stats import HashStats, Stability
from dedupd.index.store import HashUpdate, IndexedFile

CHUNK_FILES, CHUNK_BYTES = 16, 1024 * 1024  # reads per task (at most)
HEAD_BATCH = 4096  # first reads per batch, in inode order
READERS = 4  # threads reading files (several reads in flight keep the device busy)
PREFETCH = 8  # files opened (and asked for with WILLNEED) ahead of the one read
WINDOW_BYTES = 1024 * 1024 * 1024  # whole-file bytes per window, in disk order (at most)
_new = tuple.__new__  # a NamedTuple's own __new__ is a Python function: 3x the cost

if TYPE_CHECKING:  # imported when a pool is made: `dedupd scan` mostly has none
    from concurrent.futures import ThreadPoolExecutor

Job = tuple[IndexedFile, bool, SizeGroup]
_J = TypeVar("_J", bound=tuple[IndexedFile, bool, SizeGroup])


class Together(Protocol):
    """Optional whole reader of several members of one size, side by side (the hardlink
    path's dedupd.dedup.together: hashes and byte compare in one read): one outcome per
    file, in order, each what read_one would give. While `warm` (its reads so far all
    came from the page cache) the hasher calls it in its own thread, not the pool's."""

    warm: bool

    def __call__(self, files: list[IndexedFile], /) -> list[Got | Problem]: ...


def window_bytes() -> int:
    """WINDOW_BYTES, or an eighth of the memory when that is less: a window's bytes must
    still be in the page cache when its groups are acted on."""
    try:
        mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return WINDOW_BYTES
    return max(16 * 1024 * 1024, min(WINDOW_BYTES, mem // 8))


def inode_order(jobs: list[_J]) -> list[_J]:
    return sorted(jobs, key=lambda j: (j[0].dev, j[0].ino))


def disk_order(jobs: list[_J]) -> list[_J]:
    dirs = Dirs()
    try:
        keyed = [(on_disk(j[0], dirs), n, j) for n, j in enumerate(jobs)]
    finally:
        dirs.close()
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [j for _, _, j in keyed]


def read_many(jobs: Sequence[_J]) -> Iterator[tuple[_J, Got | Problem]]:
    """Read jobs in order. While the page cache holds what they read, one at a time
    (read_cached); from COLD_MISSES misses in a row on (a cold cache), opening up
    to PREFETCH files ahead (WILLNEED): the disk then has a queue to work on while
    this thread hashes. A miss alone is read alone: on a warm cache, a file another
    reader read only the start of still carries the kernel's readahead mark past
    it, which fails RWF_NOWAIT although every byte is cached (after `jdupes -r`,
    most files of the real bench tree: the rest of each batch went the slow way)."""
    ahead: deque[tuple[_J, int | Problem]] = deque()
    nxt = 0
    warm, misses = True, 0
    dirs = Dirs()
    try:
        while nxt < len(jobs) or ahead:
            if warm and not ahead:
                j = jobs[nxt]
                if cacheable(j[0], j[1]):
                    got = read_cached(j[0], j[1], dirs)
                    nxt += 1
                    if got is not None:
                        misses = 0
                        yield j, got
                        continue
                    misses += 1
                    warm = misses < COLD_MISSES
                    fd = open_ahead(j[0], j[1], dirs)
                    yield j, (fd if isinstance(fd, Problem) else read_one(j[0], j[1], fd))
                    continue
            while nxt < len(jobs) and len(ahead) <= PREFETCH:
                j = jobs[nxt]
                ahead.append((j, open_ahead(j[0], j[1], dirs)))
                nxt += 1
            j, fd = ahead.popleft()
            yield j, (fd if isinstance(fd, Problem) else read_one(j[0], j[1], fd))
    finally:
        for _, fd in ahead:
            if isinstance(fd, int):
                os.close(fd)
        dirs.close()


def _chunks(jobs: list[Job]) -> Iterator[list[Job]]:
    """Consecutive jobs, up to CHUNK_FILES files and CHUNK_BYTES bytes each (a task
    per 12 KiB file costs more than its read)."""
    chunk: list[Job] = []
    nbytes = 0
    for j in jobs:
        if chunk and (len(chunk) >= CHUNK_FILES or nbytes + j[0].size > CHUNK_BYTES):
            yield chunk
            chunk, nbytes = [], 0
        chunk.append(j)
        nbytes += j[0].size
    if chunk:
        yield chunk


def _read_chunk(chunk: list[Job], done: queue.SimpleQueue[object]) -> None:
    try:
        for item in read_many(chunk):
            done.put(item)
    except BaseException as e:  # handed to the consuming thread
        done.put(e)


def _sets(jobs: list[Job]) -> tuple[list[list[Job]], list[Job]]:
    """The whole reads of each size group that has two or more of them among jobs
    (in the order of their first job), and the other jobs."""
    whole: dict[int, list[Job]] = {}
    for j in jobs:
        if j[1]:
            whole.setdefault(id(j[2]), []).append(j)
    sets = {k: s for k, s in whole.items() if len(s) > 1}
    return list(sets.values()), [j for j in jobs if not (j[1] and id(j[2]) in sets)]


def _read_set(jobs: list[Job], together: Together, done: queue.SimpleQueue[object]) -> None:
    try:
        for item in zip(jobs, together([j[0] for j in jobs]), strict=True):
            done.put(item)
    except BaseException as e:  # handed to the consuming thread
        done.put(e)


def _threaded(pool: ThreadPoolExecutor, jobs: list[Job], together: Together | None = None
              ) -> Iterator[tuple[Job, Got | Problem]]:
    """read_many in the pool's threads (with `together`, a size group's whole reads in
    one task of their own, or read here while it is warm); outcomes in the order they
    complete. Completions come on a queue: wait() over thousands of futures costs time
    linear in their number at every call.
    Why here while warm: on a warm cache a read is a copy, and two threads of one
    interpreter hand its lock to each other at every read and every outcome (issue 16:
    the bench tree's reads took 0.19 s in the pool, 0.11 s in one thread)."""
    done: queue.SimpleQueue[object] = queue.SimpleQueue()
    sets, rest = _sets(jobs) if together is not None else ([], jobs)
    for chunk in _chunks(rest):
        pool.submit(_read_chunk, chunk, done)
    pending = len(rest)
    for s in sets:
        assert together is not None
        if together.warm:
            yield from zip(s, together([j[0] for j in s]), strict=True)
        else:
            pool.submit(_read_set, s, together, done)
            pending += len(s)
    for _ in range(pending):
        item = done.get()
        if isinstance(item, BaseException):
            raise item
        yield item  # type: ignore[misc]


def _jobs(sg: SizeGroup, reads: list[Read]) -> list[Job]:
    return [(f, whole, sg) for f, whole in reads]


class Hasher:
    """Hashes complete size groups (see the module docstring). Counters are merged
    into `stats` in the caller's thread; results come in the order their reads
    complete, one per size group given. `together`: see Together."""

    def __init__(self, stability: Stability, stats: HashStats, workers: int | None = None,
                 window: int | None = None, now: Callable[[], float] = time.time,
                 together: Together | None = None) -> None:
        self.stability, self.stats, self.now = stability, stats, now
        self.together = together
        self.workers = workers or READERS
        self.window = window or window_bytes()

    def run(self, groups: Iterable[list[IndexedFile]]) -> Iterator[Hashed]:
        pool: ThreadPoolExecutor | None = None  # made with the first batch: often none
        window: list[Job] = []
        try:
            for batch in self._batches(groups):
                if pool is None:
                    from concurrent.futures import ThreadPoolExecutor
                    pool = ThreadPoolExecutor(self.workers, thread_name_prefix="hash")
                jobs = inode_order([j for sg, reads in batch for j in _jobs(sg, reads)])
                for sg, _ in batch:
                    if not sg.outstanding:
                        yield self._done(sg)
                for (f, _, sg), got in _threaded(pool, jobs, self.together):
                    window += _jobs(sg, sg.learn(f, got))
                    if not sg.outstanding:
                        yield self._done(sg)
                if sum(j[0].size for j in window) >= self.window:
                    yield from self._whole(pool, window)
                    window = []
            if pool is not None:
                yield from self._whole(pool, window)
        finally:
            # Closed early (an error, a stop request): drop the reads not started yet
            # instead of reading the rest of the window for nobody.
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _batches(self, groups: Iterable[list[IndexedFile]]
                 ) -> Iterator[list[tuple[SizeGroup, list[Read]]]]:
        """Size groups with their first reads, about HEAD_BATCH reads a batch."""
        batch: list[tuple[SizeGroup, list[Read]]] = []
        n = 0
        for files in groups:
            sg = SizeGroup(files[0].size if files else 0)
            ready = self.stability.split(files, self.now(), sg.stats)
            # with a together reader, members never read are read whole side by side
            # at once (two at least: one alone still starts with its head)
            sg.whole_first = self.together is not None and \
                sum(1 for f in ready if f.head is None) >= 2
            reads = [r for f in ready for r in sg.add(f)]
            batch.append((sg, reads))
            n += len(reads)
            if n >= HEAD_BATCH:
                yield batch
                batch, n = [], 0
        if batch:
            yield batch

    def _whole(self, pool: ThreadPoolExecutor, window: list[Job]) -> Iterator[Hashed]:
        """Stage 2: the window's whole reads in disk order."""
        for (f, _, sg), got in _threaded(pool, disk_order(window), self.together):
            sg.learn(f, got)
            if not sg.outstanding:
                yield self._done(sg)

    def _done(self, sg: SizeGroup) -> Hashed:
        res = sg.result()
        self.stats.merge(res.stats)
        return res


class Feeder:
    """The scan's early hashing: the same rule and order, applied to the members of
    many sizes as they are recorded, one batch at a time, in the calling thread.

    put() reads what the batch makes due and returns the new hashes (stat-checked:
    the record may meanwhile have re-recorded an inode as changed; in the order
    learnt: a large file's head, then its whole, the later one counts) and the
    inodes that vanished or changed. Past `limit` inodes held it lets go of everything
    (hashes already read stay in the index) and `overflow` is set: the caller then
    hashes the index's size groups instead.
    """

    def __init__(self, stability: Stability, limit: int,
                 now: Callable[[], float] = time.time) -> None:
        self.stability, self.limit, self.now = stability, limit, now
        self.stats = HashStats()
        self.sizes: dict[int, SizeGroup] = {}
        self.single: dict[int, IndexedFile] = {}  # sizes met once
        self.held = 0
        self.waiting: set[Key] = set()  # counted pending once
        self.sink: Sink = ([], [])  # what the groups learn, handed on by put()
        self.overflow = False

    def put(self, batch: Sequence[IndexedFile]
            ) -> tuple[list[HashUpdate], list[Key]]:
        if not self.overflow and self.held + len(batch) > self.limit:
            self._let_go()  # before the batch: no read handed out is left unread
        if self.overflow:
            return [], []
        second = self._read(self._first(batch), inode_order)
        self._read(second, disk_order)
        updates, gone = self.sink
        out = updates[:], gone[:]  # the groups hold these lists: emptied, not replaced
        updates.clear()
        gone.clear()
        return out

    def _read(self, jobs: list[Job], order: Callable[[list[Job]], list[Job]]) -> list[Job]:
        """Read jobs: those read_warm answers from the page cache (directory by
        directory), the others by read_many in `order`; learn each outcome. Returns
        the reads the outcomes make due."""
        due: list[Job] = []
        if not jobs:
            return due
        rest: list[Job] = []
        ups = self.sink[0]
        nread = nsmall = 0
        for job, got in zip(jobs, read_warm(jobs), strict=True):
            if got is None:
                rest.append(job)
                continue
            f, _, sg = job
            if sg.small:
                # SizeGroup.learn of a small member's whole read (most reads of a
                # tree), written out: a third of the rule's cost per file. Its bytes
                # are counted in the Feeder's stats, the sum of its groups'.
                files, key = sg.files, (f[0], f[1])
                m = files[key]  # the latest record: another name may have come
                head, full, n = got
                files[key] = _new(IndexedFile, (m[0], m[1], m[2], m[3], m[4], head, full,
                                                m[7], m[8]))
                ups.append(_new(HashUpdate, (m[0], m[1], head, full, (m[2], m[3], m[4]))))
                sg.outstanding -= 1
                nread += n
                nsmall += 1
            else:
                due += _jobs(sg, sg.learn(f, got))
        self.stats.bytes_read += nread
        self.stats.bytes_hashed += nread
        self.stats.full_hashes += nsmall
        for (f, _, sg), outcome in read_many(order(rest)):
            due += _jobs(sg, sg.learn(f, outcome))
        return due

    def _first(self, batch: Sequence[IndexedFile]) -> list[Job]:
        """Take a batch's members (this loop runs once per file of a tree); the
        first reads they make due."""
        now = self.now()
        settle = self.stability.settle_seconds > 0
        sizes, single = self.sizes, self.single
        first: list[Job] = []
        held = self.held
        for f in batch:
            size = f[2]
            if not size:
                continue
            if settle and not self._settled(f, now):
                continue
            sg = sizes.get(size)
            if sg is None:
                one = single.pop(size, None)
                if one is None:  # most sizes stay single: no SizeGroup for them
                    single[size] = f
                    held += 1
                    continue
                sg = sizes[size] = SizeGroup(size, stat_checked=True, sink=self.sink)
                first += _jobs(sg, sg.add(one))
            n = len(sg.files)
            if reads := sg.add(f):
                for r in reads:
                    first.append((r[0], r[1], sg))
            held += len(sg.files) - n
        self.held = held
        return first

    def _settled(self, f: IndexedFile, now: float) -> bool:
        if self.stability.ready(f, now):
            return True
        if f.key not in self.waiting:
            self.waiting.add(f.key)
            self.stats.wait_until(self.stability.ready_at(f))
        return False

    def _let_go(self) -> None:
        self.overflow = True
        for sg in self.sizes.values():
            self.stats.merge(sg.stats)
        # the index pass that takes over counts the files still settling itself
        self.stats.pending, self.stats.pending_first, self.stats.pending_last = 0, 0.0, 0.0
        self.sizes, self.single, self.held = {}, {}, 0

    def groups(self) -> list[Group]:
        """The groups found (only when not overflowed); counters go to `stats`."""
        out: list[Group] = []
        for size in sorted(self.sizes):
            sg = self.sizes[size]
            self.stats.merge(sg.stats)
            out.extend(sg.groups(updates=False))  # put() returned them already
        return out
