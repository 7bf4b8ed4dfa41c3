"""Store.groups_under on a subtree rescan whose files have copies outside it: the
candidate trim (groups._TRIM) must stay linear in the names.

Two trees, N and 2N: under top/a, N duplicate pairs and N files whose only copy is
under top/b (a holds most directories: the whole-tree plan with its trim). Each is
scanned once, then groups_under(top/a) is timed (best of 3). Linear: the 2N tree
takes about twice as long; the row-value NOT IN that was there took 4x (N=20,000:
10.4 s; N=50,000: 61.5 s, where the trim by rowid takes 0.5 s). Exit 1 when the
ratio is over 3.

usage: bench/bench_trim.py [--n N]   (default 50,000: 150,000 candidates at 1N)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dedupd.index.store import Store  # noqa: E402
from dedupd.scan.scanner import ScanOptions, scan  # noqa: E402


def make_tree(top: Path, n: int) -> None:
    def put(path: Path, g: int) -> None:
        path.write_bytes(b"%09d" % g * (2 + g % 50))

    for d in range(60):
        (top / "a" / f"d{d}").mkdir(parents=True)
    for d in range(40):
        (top / "b" / f"d{d}").mkdir(parents=True)
    for i in range(2 * n):
        put(top / "a" / f"d{i % 60}" / f"p{i}", i // 2)
    for j in range(n):
        put(top / "a" / f"d{j % 60}" / f"x{j}", 10**8 + j)
        put(top / "b" / f"d{j % 40}" / f"x{j}", 10**8 + j)


def timed(work: Path, n: int) -> float:
    top = work / f"t{n}"
    make_tree(top, n)
    store = Store(f"sqlite:///{work}/i{n}.db")
    try:
        scan(store, [str(top)], ScanOptions())
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            files = sum(len(g) for g in store.groups_under([os.fsencode(top / "a")], 1))
            best = min(best, time.perf_counter() - t)
        assert files == 2 * n, files
        return best
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    n = ap.parse_args().n
    work = Path(tempfile.mkdtemp(prefix="dedupd-bench-trim-"))
    try:
        one, two = timed(work, n), timed(work, 2 * n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = two / one
    print(f"groups_under of a subtree, {3 * n} candidates: {one:.2f} s; {6 * n}: {two:.2f} s; "
          f"ratio {ratio:.2f} (linear ~2, quadratic ~4; load {os.getloadavg()[0]:.2f})")
    return 0 if ratio <= 3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
