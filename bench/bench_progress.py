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
overhead of the display. On a busy machine the wall times wander by more than
the display costs, so the display's own CPU is measured apart too, in fresh
interpreters (--probe): once per display (import, first and last frame) and per
refresh, and put next to the --no-progress scan. About a minute.
Run: flock /work/wt/bench.lock .venv/bin/python bench/bench_progress.py
(or make bench BENCH_ARGS=progress); BENCH_ROUNDS=N for N rounds (default 5).
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
    reader = threading.Thread(target=_drain, args=(master, drawn), daemon=True)
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
REFRESHES = 200  # timed one by one in each probe


def probe() -> None:
    """(Run in a fresh interpreter, --probe.) What the display itself costs, in
    CPU seconds of the thread that pays: once (import, first and last frame) and
    per refresh. A small scan runs first, so that what a scan has imported by
    the time its display starts is already there. Prints JSON on stdout."""
    import contextlib
    import json

    from dedupd.cli import main as dedupd_main
    from dedupd.progress import TerminalProgress

    with tempfile.TemporaryDirectory(prefix="dedupd-bench-probe-", dir=BASE) as tmp:
        for i in range(4):
            Path(tmp, f"f{i}").write_bytes(b"x" * (1000 + i % 2))
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            dedupd_main(["scan", "--no-progress", "--json", "--db", f"sqlite:///{tmp}/i.db", tmp])
    master, slave = os.openpty()
    reader = threading.Thread(target=_drain, args=(master, [0]), daemon=True)
    reader.start()
    term = open(slave, "w", encoding="utf-8")  # noqa: SIM115
    src = TerminalProgress("files", delay=3600)
    src.phase("walk")
    src.update(40_000, note="400.0 MiB")
    src.phase("hash", 12_000, 4 * 1024**3)
    src.update(3_000, 1024**3)
    clock = time.thread_time
    t0 = clock()
    from dedupd.progress_term import Display

    display = Display(src, term)
    display.start()
    display.stop()
    fixed = clock() - t0
    refresh = []
    display = Display(src, term)
    display.start()
    for _ in range(REFRESHES):
        src.advance(1, 1 << 20)  # new numbers: every refresh redraws
        t0 = clock()
        display.refresh()
        refresh.append(clock() - t0)
    display.stop()
    term.close()
    reader.join(10)
    os.close(master)
    print(json.dumps({"fixed": fixed, "refresh": statistics.median(refresh),
                      "refresh_best": min(refresh)}))


def _drain(master: int, drawn: list[int]) -> None:
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        if not data:
            return
        drawn[0] += len(data)


def measure_display() -> tuple[list[float], list[float]]:
    """Fixed and per-refresh CPU seconds, one of each per fresh interpreter."""
    import json
    import sys

    fixed, refresh = [], []
    for _ in range(ROUNDS):
        out = subprocess.run([sys.executable, __file__, "--probe"], check=True,
                             capture_output=True, text=True).stdout
        got = json.loads(out)
        fixed.append(got["fixed"])
        refresh.append(got["refresh"])
    return fixed, refresh


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    drawn = 0
    load_before = load()
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
    fixed, refresh = measure_display()
    report(runs, drawn, fixed, refresh)
    print(f"  ({load_before} before, {load()} after)")


def report(runs: dict[bool, list[tuple[float, float]]], drawn: int,
           fixed: list[float], refresh: list[float]) -> None:
    from dedupd.progress_term import REFRESH_PER_SECOND

    med = statistics.median
    print(f"scan of {FILES} files, {ROUNDS} rounds, stderr on a pty, display drawn after "
          f"{DELAY} s ({drawn // ROUNDS} bytes of progress drawn per scan)")
    print(f"  {'':24s}{'wall best':>10s}{'median':>9s}{'cpu best':>11s}{'median':>9s}")
    for progress, label in ((False, "--no-progress"), (True, "progress")):
        walls = [w for w, _ in runs[progress]]
        cpus = [c for _, c in runs[progress]]
        print(f"  {label:24s}{min(walls):9.3f}s{med(walls):8.3f}s{min(cpus):10.3f}s"
              f"{med(cpus):8.3f}s")
    over = [(pick([r[k] for r in runs[True]]) - pick([r[k] for r in runs[False]]))
            / pick([r[k] for r in runs[False]]) * 100 for k in (0, 1) for pick in (min, med)]
    print(f"  {'overhead (measured)':24s}" + "".join(
        f"{o:+{w}.1f}%" for o, w in zip(over, (9, 8, 10, 8), strict=True)))
    # the display's own cost, from fresh interpreters, against the same scans
    wall0, cpu0 = med([w for w, _ in runs[False]]), med([c for _, c in runs[False]])
    drawn_for = max(0.0, wall0 - float(DELAY))
    n = drawn_for * REFRESH_PER_SECOND
    print(f"the display's own CPU ({ROUNDS} fresh interpreters; % of the --no-progress "
          f"scan's median wall {wall0:.3f}s / cpu {cpu0:.3f}s):")
    for label, xs in (("fixed (import, first and last frame)", fixed),
                      ("per refresh", refresh)):
        b, m = min(xs), med(xs)
        print(f"  {label:38s} best {b * 1000:7.3f} ms  median {m * 1000:7.3f} ms"
              f"  ({m / wall0 * 100:.2f}% / {m / cpu0 * 100:.2f}%)")
    total = med(fixed) + n * med(refresh)
    label = f"expected: fixed + {n:.0f} refreshes"
    print(f"  {label:38s} {total * 1000:12.3f} ms"
          f"  ({total / wall0 * 100:.2f}% / {total / cpu0 * 100:.2f}%)")


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--probe"]:
        probe()
    else:
        main()
