"""Where a first scan's time goes: each stage alone next to its bare cost.

Measured the same way (one process, warm cache, best of ROUNDS): a bare
`os.scandir` + lstat walk against dedupd's walk (handles, events); a bare
open + read + XXH3 loop over the files dedupd reads against the engine's
Feeder reading them (the rule, the checks, the bookkeeping); and the index's
`record` of the walk's events. Not part of `make bench`; run it when the scan
is slower than expected:

    .venv/bin/python bench/profile_scan.py TREE
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import xxhash
from common import ROOT  # noqa: F401  (puts the checkout on sys.path)

from dedupd import handles
from dedupd.files.events import FileEvent, WalkStats
from dedupd.hashing import Feeder, Stability
from dedupd.index.store import IndexedFile, Store
from dedupd.scan.walk import WalkOptions, normalize_roots, walk

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def best(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
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


def indexed(evs: list[FileEvent]) -> list[IndexedFile]:
    return [IndexedFile(e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns, None, None, 0,
                        (e.path,)) for e in evs]


def feed(files: list[IndexedFile]) -> Feeder:
    fd = Feeder(Stability(), len(files) + 1)
    for i in range(0, len(files), 2000):
        fd.put(files[i:i + 2000])
    return fd


def record(evs: list[FileEvent], roots: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        st = Store(f"sqlite:///{d}/i.db")
        sid = st.begin_scan(roots)
        for i in range(0, len(evs), 2000):
            st.record(sid, evs[i:i + 2000], False)


def main(tree: str) -> int:
    roots = normalize_roots([tree])
    with handles.anchored(roots):
        evs = list(walk(roots, WalkOptions(), WalkStats()))
        files = indexed(evs)
        read = sorted({f.path for g in feed(files).sizes.values() for f in g.files.values()
                       if f.key in g.updates})
        rows = [
            ("bare walk (scandir + lstat)", best(lambda: bare_walk(roots[0]))),
            ("dedupd walk", best(lambda: list(walk(roots, WalkOptions(), WalkStats())))),
            ("index record of the walk's events", best(lambda: record(evs, roots))),
            (f"bare read loop ({len(read)} files, whole)", best(lambda: bare_reads(read))),
            ("engine Feeder (same files, the rule)", best(lambda: feed(files))),
        ]
    print(f"{len(evs)} files under {tree}; best of {ROUNDS}, one process, warm cache")
    for label, secs in rows:
        print(f"{label:45} {secs:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else str(Path.cwd())))
