"""Where a first scan's time goes: each stage next to its bare cost, then the
whole scan's CPU process by process.

Stages (one process, warm cache, CPU seconds, best of ROUNDS): a bare
`os.scandir` + lstat walk against dedupd's walk; a bare `executemany` of the
same inode and path rows into the same SQLite schema against the index's
`record`; a bare open + read + XXH3 loop over the files dedupd reads against
the engine's Feeder reading them (the rule, the checks, the bookkeeping); a bare
`executemany` of the hash UPDATEs the Feeder learnt against `Store.save_hashes`;
the Feeder again with its reads answered from memory (the rule alone).
Each stage runs under the collector settings of the process it runs in (quiet_gc).
Whole run: `scan()` as `dedupd scan` runs it, with the CPU of every process
(the walk and feeder children report theirs at exit) and of the parent's
threads. Not part of `make bench`; run it when the scan is slower than expected:

    .venv/bin/python bench/profile_scan.py TREE
"""

from __future__ import annotations

import os
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash
from common import ROOT  # noqa: F401  (puts the checkout on sys.path)

from dedupd import forkpipe, handles
from dedupd.files.events import FileEvent, WalkStats
from dedupd.hashing import Feeder, Stability, engine, forked
from dedupd.index.db import sqlite_pragmas, to_s64
from dedupd.index.store import HashUpdate, IndexedFile, Store, path_key
from dedupd.queuethread import QueueThread
from dedupd.scan import prehash, scanner
from dedupd.scan.walk import WalkOptions, normalize_roots, walk

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BATCH = 2000


def best(fn: Callable[[], object]) -> float:
    """Least CPU time (this process) of ROUNDS calls: the machine is shared."""
    times = []
    for _ in range(ROUNDS):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def bare_walk(root: bytes) -> int:
    n = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif st.st_size:
                    n += 1
    return n


def bare_reads(paths: list[bytes]) -> int:
    buf = bytearray(1 << 20)
    total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            h = xxhash.xxh3_128()
            while n := os.readv(fd, (buf,)):
                h.update(memoryview(buf)[:n])
                total += n
        finally:
            os.close(fd)
    return total


_BARE_DDL = (
    "CREATE TABLE inodes (dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, "
    'ctime_ns INTEGER, head INTEGER, "full" BLOB, seen INTEGER, unstable INTEGER, '
    "PRIMARY KEY (dev, ino)) WITHOUT ROWID",
    "CREATE INDEX ix_size ON inodes (size)",
    "CREATE TABLE paths (path_key BLOB PRIMARY KEY, path BLOB, dev INTEGER, ino INTEGER, "
    "seen INTEGER)",
    "CREATE INDEX ix_inode ON paths (dev, ino)",
)


def bare_rows(evs: list[FileEvent]) -> None:
    """An inode row and a path row per file by executemany, in batches of BATCH, one
    transaction each, into a fresh SQLite file with the index's pragmas: a key and
    one secondary index per table (the index's own schema is free to differ)."""
    with tempfile.TemporaryDirectory() as d:
        c = sqlite3.connect(f"{d}/i.db", isolation_level=None)
        sqlite_pragmas(c)
        for stmt in _BARE_DDL:
            c.execute(stmt)
        for i in range(0, len(evs), BATCH):
            part = evs[i:i + BATCH]
            c.execute("BEGIN")
            c.executemany("INSERT INTO inodes VALUES (?,?,?,?,?,?,?,?,?)",
                          [(e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns, None, None, 1, 0)
                           for e in part])
            c.executemany("INSERT INTO paths VALUES (?,?,?,?,?)",
                          [(path_key(e.path), e.path, e.dev, e.ino, 1) for e in part])
            c.execute("COMMIT")
        c.close()


def indexed(evs: list[FileEvent]) -> list[IndexedFile]:
    return [IndexedFile(e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns, None, None, 0,
                        (e.path,)) for e in evs]


def feed(files: list[IndexedFile]) -> list[HashUpdate]:
    """The hashes a Feeder learns over files, in batches as a scan gives them (of
    an inode read head first, then whole, the last)."""
    fd = Feeder(Stability(), len(files) + 1)
    learnt: dict[tuple[int, int], HashUpdate] = {}
    for i in range(0, len(files), BATCH):
        ups, _gone = fd.put(files[i:i + BATCH])
        learnt.update(((u[0], u[1]), u) for u in ups)
    return list(learnt.values())


def rule_alone(files: list[IndexedFile]) -> float:
    """CPU seconds of feed(files) with every read answered from memory (the outcomes
    a first feed read): what the rule and its bookkeeping cost, without the reads."""
    outcomes: dict[tuple[int, int, bool], Any] = {}
    read_warm = engine.read_warm

    def kept(jobs: Any) -> list[Any]:
        got = read_warm(jobs)
        outcomes.update(((j[0][0], j[0][1], j[1]), g) for j, g in zip(jobs, got, strict=True))
        return got

    def memory(jobs: Any) -> list[Any]:
        return [outcomes[(j[0][0], j[0][1], j[1])] for j in jobs]
    try:
        engine.read_warm = kept  # type: ignore[assignment]
        feed(files)
        engine.read_warm = memory  # type: ignore[assignment]
        return best(lambda: feed(files))
    finally:
        engine.read_warm = read_warm


def record(evs: list[FileEvent], roots: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        st = Store(f"sqlite:///{d}/i.db")
        sid = st.begin_scan(roots)
        for i in range(0, len(evs), BATCH):
            st.record(sid, evs[i:i + BATCH], False)


def hashes(evs: list[FileEvent], roots: list[bytes], updates: list[HashUpdate],
           bare: bool) -> float:
    """CPU seconds of writing the learnt hashes into an index that recorded evs: by
    Store.save_hashes (BATCH at a time), or by a bare executemany of one UPDATE per
    row (the same stat-checked statement, without the Python around it)."""
    with tempfile.TemporaryDirectory() as d:
        st = Store(f"sqlite:///{d}/i.db")
        sid = st.begin_scan(roots)
        for i in range(0, len(evs), BATCH):
            st.record(sid, evs[i:i + BATCH], False)
        fs = st.fs_of(evs[0].dev, evs[0].path)
        rows = [(u.full, fs, to_s64(u.ino), *(u.stat or ())) for u in updates]
        t = time.process_time()
        for i in range(0, len(updates), BATCH):
            if not bare:
                st.save_hashes(updates[i:i + BATCH])
                continue
            with st.db.tx() as cur:
                cur.executemany('UPDATE inodes SET "full" = ? WHERE fs = ? AND ino = ? AND '
                                "size = ? AND mtime_ns = ? AND mtime_ns + ctime_delta = ?",
                                rows[i:i + BATCH])
        return time.process_time() - t


def stages(tree: str) -> int:
    # the collector's settings of the processes these stages run in (forkpipe)
    forkpipe.quiet_gc()
    roots = normalize_roots([tree])
    with handles.anchored(roots):
        evs = list(walk(roots, WalkOptions(), WalkStats()))
        files = indexed(evs)
        ups = feed(files)
        learnt = {(u[0], u[1]) for u in ups}
        read = sorted({f.path for f in files if f.key in learnt})
        rows = [
            ("bare walk (scandir + lstat)", len(evs), best(lambda: bare_walk(roots[0]))),
            ("dedupd walk", len(evs), best(lambda: list(walk(roots, WalkOptions(),
                                                             WalkStats())))),
            ("bare executemany of the same rows", len(evs), best(lambda: bare_rows(evs))),
            ("index record of the walk's events", len(evs), best(lambda: record(evs, roots))),
            ("bare read loop (same files, whole)", len(read), best(lambda: bare_reads(read))),
            ("engine Feeder (same files, the rule)", len(read), best(lambda: feed(files))),
            ("  of which the rule (reads from memory)", len(read), rule_alone(files)),
            ("bare executemany of the hash UPDATEs", len(ups),
             min(hashes(evs, roots, ups, True) for _ in range(ROUNDS))),
            ("index save_hashes of the same", len(ups),
             min(hashes(evs, roots, ups, False) for _ in range(ROUNDS))),
        ]
    print(f"{len(evs)} files under {tree} ({len(read)} read); CPU s, best of {ROUNDS}, "
          "one process, warm cache")
    for label, n, secs in rows:
        print(f"  {label:40} {secs:6.2f} s {secs / max(n, 1) * 1e6:6.1f} us/file")
    return len(evs)


class _Cpu:
    """CPU seconds by process and thread of one scan (fork and thread hooks)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []
        self.parts: dict[str, float] = {}
        self.r, self.w = os.pipe()

    def spawn(self, work: Callable[[int, int], None]) -> tuple[int, int, int]:
        name = getattr(work, "__qualname__", "child").split(".")[0]
        w = self.w

        def timed(i: int, o: int) -> None:
            try:
                work(i, o)
            finally:
                ru = resource.getrusage(resource.RUSAGE_SELF)
                os.write(w, f"{name} process\t{ru.ru_utime}\t{ru.ru_stime}\n".encode())
        return _SPAWN(timed)

    def part(self, fn: Any, name: str) -> Any:
        """Accumulate the thread CPU time of fn's calls under name."""
        self.parts[name] = 0.0

        def timed(*a: Any, **k: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                self.parts[name] += time.thread_time() - t
        return timed

    def thread(self, fn: Any, name: str) -> Any:
        def timed(*a: Any, **k: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                self.rows.append((f"parent: {name} thread", time.thread_time() - t))
        return timed

    def children(self) -> None:
        os.close(self.w)
        with os.fdopen(self.r) as f:
            for line in f:
                label, user, system = line.split("\t")
                self.rows.append((f"{label} (user {float(user):.2f}, sys {float(system):.2f})",
                                  float(user) + float(system)))


_SPAWN = forkpipe.spawn


def whole(tree: str, nfiles: int) -> None:
    cpu = _Cpu()
    forkpipe.spawn = forked.spawn = cpu.spawn  # type: ignore[assignment]
    QueueThread._run = cpu.thread(QueueThread._run, "record")  # type: ignore[method-assign]
    forked.ForkedFeeders._collect = cpu.thread(  # type: ignore[method-assign]
        forked.ForkedFeeders._collect, "hash-results")
    hw = prehash.HashWriter
    hw.flush = cpu.part(hw.flush, "  of which: hash writes (save_hashes)")  # type: ignore[method-assign]
    eh = prehash.EarlyHashing
    eh.put = cpu.part(eh.put, "  of which: feeding (incl. hash writes)")  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.thread_time()
        rep = scanner.scan(Store(f"sqlite:///{d}/i.db"), [tree], scanner.ScanOptions())
        wall = time.perf_counter() - t0
        cpu.rows.append(("parent: main thread", time.thread_time() - c0))
    time.sleep(0.1)
    cpu.children()
    total = sum(s for _, s in cpu.rows)
    print(f"whole scan: {wall:.2f} s wall, {total:.2f} CPU s in all, "
          f"{total / nfiles * 1e6:.1f} us/file ({rep.stats['files_hashed']} files read); "
          f"load {os.getloadavg()[0]:.1f} (threads {threading.active_count()})")
    for label, secs in cpu.rows + list(cpu.parts.items()):
        print(f"  {label:52} {secs:6.2f} s {secs / nfiles * 1e6:6.1f} us/file")


def main(tree: str) -> int:
    whole(tree, stages(tree))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else str(Path.cwd())))
