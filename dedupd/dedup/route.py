"""Hash size groups of an extent volume into dedupe groups, reading in on-disk order.

Stage 1: the head hash (one 4 KiB read; small files are read whole, as the
foundation's Hasher does), by several threads, in batches of size groups read
in inode order (a few small files per task). Stage 2: the
files that share a size and a head with another and have no full hash yet are
collected into windows of about WINDOW_BYTES and read whole by several
threads in the order of their first block on disk. On a cold cache this is
what the time goes into: the same reads in size order seek back and forth
(originals and their copies lie far apart), while in disk order the readahead
of the filesystem and the device below it work in long runs.

A size group is handed on (`Routed`) as soon as its last read is done, so the
dedupe of the first groups overlaps the reads of the next ones, and the dedupe
then finds the bytes it compares in the page cache. The kernel still compares
every byte before sharing (a hash only proposes a group).
"""

from __future__ import annotations

import errno
import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dedupd import handles, testpoints
from dedupd.dedup import fiemap
from dedupd.files.events import Problem
from dedupd.hashing import WHOLE_READ, FileChanged, HashStats, Stability, read_hashes
from dedupd.index.store import HashUpdate, IndexedFile

Key = tuple[int, int]
CHUNK_FILES, CHUNK_BYTES = 16, 1024 * 1024  # reads per task (at most)
HEAD_BATCH = 4096  # head reads per batch, in inode order
READERS = 4  # threads reading files (several reads in flight keep the device busy)
WINDOW_BYTES = 1024 * 1024 * 1024  # file bytes read per window, in disk order (at most)
_RO = handles.FILE_FLAGS | getattr(os, "O_NOATIME", 0)


@dataclass(frozen=True)
class Group:
    """Files with one full hash, to dedupe together, and the new hashes of its members
    (the deduper writes them, in order with its own writes)."""

    size: int
    files: tuple[IndexedFile, ...]
    full: bytes
    updates: tuple[HashUpdate, ...] = ()


@dataclass(frozen=True)
class Routed:
    """One size group: the new hashes of files in no group, vanished inodes, groups."""

    size: int
    updates: tuple[HashUpdate, ...]
    gone: tuple[Key, ...]
    groups: tuple[Group, ...]
    stats: HashStats = field(default_factory=HashStats)


@dataclass
class _Sized:
    """A size group between the stages: files by head, the reads still outstanding."""

    size: int
    ready: list[IndexedFile]  # settled members
    reader: _Reader
    reads: list[IndexedFile] = field(default_factory=list)  # need a head (stage 1)
    heads: dict[int, list[IndexedFile]] = field(default_factory=dict)
    todo: list[IndexedFile] = field(default_factory=list)  # need a full hash (stage 2)
    left: int = 0  # reads of the current stage not done yet

    @property
    def small(self) -> bool:
        return self.size <= WHOLE_READ

    def split_heads(self) -> None:
        """After stage 1: members by head, and the files stage 2 must read whole."""
        heads: dict[int, list[IndexedFile]] = defaultdict(list)
        for f in self.ready:
            f = self.reader.hashed.get(f.key, f)
            if f.head is not None and f.key not in self.reader.gone_keys:
                heads[f.head].append(f)
        self.heads = heads
        self.todo = [f for same in heads.values() if len(same) >= 2
                     for f in same if f.full is None]

    def routed(self) -> Routed:
        rd = self.reader
        fulls: dict[bytes, list[IndexedFile]] = defaultdict(list)
        for same in self.heads.values():
            if len(same) < 2:
                continue
            for f in same:
                f = rd.hashed.get(f.key, f)
                if f.full is not None:
                    fulls[f.full].append(f)
        groups = [Group(self.size, tuple(g), full,
                        tuple(rd.updates[f.key] for f in g if f.key in rd.updates))
                  for full, g in fulls.items() if len(g) >= 2]
        grouped = {f.key for g in groups for f in g.files}
        loose = tuple(u for k, u in rd.updates.items() if k not in grouped)
        return Routed(self.size, loose, tuple(rd.gone), tuple(groups), rd.stats)


class Router:
    """Routes size groups (see the module docstring); counters are merged into `stats`
    in the caller's thread. Results come in the order their reads complete."""

    def __init__(self, stability: Stability, stats: HashStats, workers: int | None = None,
                 window: int | None = None, now: Callable[[], float] = time.time) -> None:
        self.stability = stability
        self.stats = stats
        self.workers = workers or READERS
        self.window = window or window_bytes()
        self.now = now

    def route(self, groups: Iterable[list[IndexedFile]]) -> Iterator[Routed]:
        batch: list[_Sized] = []
        nbytes = 0
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="route")
        try:
            for sized in self._heads(pool, groups):
                if not sized.todo:
                    yield self._done(sized)
                    continue
                batch.append(sized)
                nbytes += sized.size * len(sized.todo)
                if nbytes >= self.window:
                    yield from self._read_window(pool, batch)
                    batch, nbytes = [], 0
            yield from self._read_window(pool, batch)
        finally:
            # Closed early (an error, a stop request): drop the reads not started yet
            # instead of reading the rest of the window for nobody.
            pool.shutdown(wait=True, cancel_futures=True)

    def _done(self, sized: _Sized) -> Routed:
        r = sized.routed()
        self.stats.merge(r.stats)
        return r

    def _heads(self, pool: ThreadPoolExecutor, groups: Iterable[list[IndexedFile]]
               ) -> Iterator[_Sized]:
        """Stage 1 over batches of about HEAD_BATCH files needing a head read."""
        batch: list[_Sized] = []
        n = 0
        for files in groups:
            batch.append(self._prepare(files))
            n += len(batch[-1].reads)
            if n >= HEAD_BATCH:
                yield from self._read_heads(pool, batch)
                batch, n = [], 0
        yield from self._read_heads(pool, batch)

    def _prepare(self, files: list[IndexedFile]) -> _Sized:
        rd = _Reader(HashStats())
        ready = self.stability.split(files, self.now(), rd.stats)
        s = _Sized(files[0].size if files else 0, ready, rd)
        if len(ready) >= 2:
            s.reads = [f for f in ready if f.head is None or (s.small and f.full is None)]
        return s

    def _read_heads(self, pool: ThreadPoolExecutor, batch: list[_Sized]) -> Iterator[_Sized]:
        """Read the batch's heads in inode order (files written one after the other lie
        on disk in about that order too; stage 2 asks FIEMAP for the big reads)."""
        jobs = sorted(((f.dev, f.ino, f, s) for s in batch for f in s.reads),
                      key=lambda j: (j[0], j[1]))
        for s in batch:
            s.left = len(s.reads)
            if not s.left:
                s.split_heads()
                yield s
        yield from self._run(pool, [(f, s, s.small) for _, _, f, s in jobs], _Sized.split_heads)

    def _run(self, pool: ThreadPoolExecutor, jobs: list[tuple[IndexedFile, _Sized, bool]],
             finish: Callable[[_Sized], None]) -> Iterator[_Sized]:
        """Read in the order given, a few small files per task (a task per 12 KiB file
        costs more than its read); yield each size group (after finish) as soon as its
        last read is done."""
        # Completions arrive on a queue: wait() over thousands of futures costs
        # time linear in their number at every call.
        done: queue.SimpleQueue[_Sized | BaseException] = queue.SimpleQueue()
        for chunk in _chunks(jobs):
            pool.submit(_read_chunk, chunk, done)
        for _ in range(len(jobs)):
            s = done.get()
            if isinstance(s, BaseException):
                raise s
            s.left -= 1
            if s.left == 0:
                finish(s)
                yield s

    def _read_window(self, pool: ThreadPoolExecutor, batch: list[_Sized]) -> Iterator[Routed]:
        """Stage 2: full-hash the window's files in disk order; yield each size group
        once its reads are done."""
        jobs = [(on_disk(f), f, s) for s in batch for f in s.todo]
        jobs.sort(key=lambda j: j[0])
        for s in batch:
            s.left = len(s.todo)
        for s in self._run(pool, [(f, s, True) for _, f, s in jobs], lambda s: None):
            yield self._done(s)


def _chunks(jobs: list[tuple[IndexedFile, _Sized, bool]]
            ) -> Iterator[list[tuple[IndexedFile, _Sized, bool]]]:
    """Consecutive jobs, up to CHUNK_FILES files and CHUNK_BYTES bytes each."""
    chunk: list[tuple[IndexedFile, _Sized, bool]] = []
    nbytes = 0
    for j in jobs:
        if chunk and (len(chunk) >= CHUNK_FILES or nbytes + j[0].size > CHUNK_BYTES):
            yield chunk
            chunk, nbytes = [], 0
        chunk.append(j)
        nbytes += j[0].size
    if chunk:
        yield chunk


def _read_chunk(chunk: list[tuple[IndexedFile, _Sized, bool]],
                done: queue.SimpleQueue[_Sized | BaseException]) -> None:
    for f, s, full in chunk:
        try:
            s.reader.read(f, full)
        except BaseException as e:  # handed to the consuming thread
            done.put(e)
            return
        done.put(s)


def window_bytes() -> int:
    """WINDOW_BYTES, or an eighth of the memory when that is less: a window's bytes must
    still be in the page cache when its groups are deduped."""
    try:
        mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return WINDOW_BYTES
    return max(16 * 1024 * 1024, min(WINDOW_BYTES, mem // 8))


def on_disk(f: IndexedFile) -> tuple[int, int, int]:
    """Sort key: (device, first physical byte, inode); unmapped files sort first."""
    phys = 0
    testpoints.at("read.open", f.path)
    try:
        fd = handles.open_at(f.path, _RO)
    except OSError:
        return (f.dev, phys, f.ino)
    try:
        phys = fiemap.first_physical(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return (f.dev, phys, f.ino)


class _Reader:
    """Reads hashes for one size group, turning failures into Problems. Reads of
    different files may run in different threads at once."""

    def __init__(self, stats: HashStats) -> None:
        self.stats = stats
        self.lock = threading.Lock()
        self.updates: dict[Key, HashUpdate] = {}
        self.hashed: dict[Key, IndexedFile] = {}
        self.gone: list[Key] = []
        self.gone_keys: set[Key] = set()  # unreadable now: in no group
        self.counted: set[Key] = set()

    def read(self, f: IndexedFile, full: bool) -> IndexedFile | None:
        """f with its head (and full hash, when asked) filled in; None if unreadable."""
        st = HashStats()  # per call: several threads may read for this group
        with self.lock:
            first = f.key not in self.counted
            self.counted.add(f.key)
        got = hash_file(f, full, st, set() if first else {f.key})
        with self.lock:
            self.stats.merge(st)
            if isinstance(got, Problem):
                self.gone_keys.add(f.key)
                if got.reason in ("changed", "vanished"):
                    self.gone.append(f.key)
                return None
            head, digest = got
            self.updates[f.key] = HashUpdate(f.dev, f.ino, head, digest)
            out = self.hashed[f.key] = with_hashes(f, head, digest)
        return out


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
        if isinstance(e, handles.PathChanged):
            reason = e.reason
        p = Problem(f.path, reason, e.strerror or str(e))
    stats.problems.append(p)
    return p


def with_hashes(f: IndexedFile, head: int, full: bytes | None) -> IndexedFile:
    return IndexedFile(f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns, head,
                       full if full is not None else f.full, f.unstable, f.paths)
