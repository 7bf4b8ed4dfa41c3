"""What the progress display costs a scan: `dedupd scan` with stderr on a
pseudo-terminal, once drawing the progress and once with --no-progress.

The display is drawn from the first moment (DEDUPD_PROGRESS_DELAY=0), not
after the usual 1 s: the worst case, rich's import included.
BENCH_PROGRESS_DELAY=1 measures what a user gets by default instead.

Builds a tree of BENCH_PROGRESS_FILES files (default 40,000, ~400 MB, 30%
duplicates) in /dev/shm when it exists, so that the disk adds no noise, and
removes it at the end. Each round scans it twice into fresh index files (every
file walked and every candidate read: a first scan), in alternating order;
prints the best and the median wall time and CPU time of each, and the
overhead of the display. About 40 seconds.
Run: .venv/bin/python bench/bench_progress.py  (or make bench BENCH_ARGS=progress)
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import DEDUPD

from tests.treegen import bulk_tree

FILES = int(os.environ.get("BENCH_PROGRESS_FILES", "40000"))
BYTES = int(os.environ.get("BENCH_PROGRESS_BYTES", str(400 * 1024**2)))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
BASE = Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())


def tree(base: Path) -> Path:
    print(f"building {FILES} files / {BYTES / 1e6:.0f} MB under {base} ...", flush=True)
    bulk_tree(base / "t", FILES, BYTES, dup_ratio=0.3)
    return base / "t"


def scan_on_tty(root: Path, db: str, progress: bool) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and bytes drawn on the terminal."""
    master, slave = os.openpty()
    drawn = [0]

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            drawn[0] += len(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    flag = "--progress" if progress else "--no-progress"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([DEDUPD, "scan", "--json", flag, "--db", db, str(root)],
                       stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL,
                       env={**os.environ, "DEDUPD_PROGRESS_DELAY": DELAY})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.close(slave)
    reader.join(10)
    os.close(master)
    if p.returncode != 0:
        raise SystemExit(f"dedupd scan failed ({p.returncode})")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, drawn[0]


DELAY = os.environ.get("BENCH_PROGRESS_DELAY", "0")


def main() -> None:
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    drawn = 0
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-progress-", dir=BASE) as tmp:
        root = tree(Path(tmp))
        scan_on_tty(root, f"sqlite:///{tmp}/warm.db", False)  # warm the page cache
        for i in range(ROUNDS):
            for progress in ((True, False) if i % 2 == 0 else (False, True)):
                db = f"sqlite:///{tmp}/r{i}-{int(progress)}.db"
                wall, cpu, n = scan_on_tty(root, db, progress)
                runs[progress].append((wall, cpu))
                drawn += n if progress else 0
                os.unlink(db.removeprefix("sqlite:///"))
    print(f"scan of {FILES} files, {ROUNDS} rounds, stderr on a pty "
          f"({drawn // ROUNDS} bytes of progress drawn per scan)")
    for progress, label in ((False, "--no-progress"), (True, "progress")):
        walls = [w for w, _ in runs[progress]]
        cpus = [c for _, c in runs[progress]]
        print(f"  {label:14s} wall best {min(walls):.3f}s median {statistics.median(walls):.3f}s"
              f"  cpu best {min(cpus):.3f}s median {statistics.median(cpus):.3f}s")
    for what, k in (("wall", 0), ("cpu", 1)):
        for how, pick in ((f"best of {ROUNDS}", min), ("median", statistics.median)):
            on = pick([r[k] for r in runs[True]])
            off = pick([r[k] for r in runs[False]])
            print(f"  overhead of the display ({what}, {how}, drawn after {DELAY} s): "
                  f"{(on - off) / off * 100:+.1f}%")


if __name__ == "__main__":
    main()
