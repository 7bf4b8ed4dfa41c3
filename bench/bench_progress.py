"""What the progress display costs a scan: `dedupd scan` with stderr on a
pseudo-terminal, once drawing the progress and once with --no-progress.

The display is drawn from the first moment (DEDUPD_PROGRESS_DELAY=0), not
after the usual 1 s: the worst case, rich's import included.
BENCH_PROGRESS_DELAY=1 measures what a user gets by default instead.

Builds a tree of BENCH_PROGRESS_FILES files (default 40,000, ~400 MB, 30%
duplicates) in /dev/shm when it exists, so that the disk adds no noise, and
removes it at the end. Each round scans it twice into fresh index files (every
file walked and every candidate read: a first scan), in alternating order;
prints the best and the median wall time and CPU time of each (all processes,
and the dedupd process alone, where the display runs: the forked walker and
hashers add most of the noise), and the overhead of the display. On a busy
machine the wall times wander by more than the display costs, so the display's
own CPU is measured apart too, in fresh interpreters (--probe): once per display
(import, first and last frame) and per refresh, and put next to the
--no-progress scan. About a minute.
Run: flock /work/wt/bench.lock .venv/bin/python bench/bench_progress.py
(or make bench BENCH_ARGS=progress); BENCH_ROUNDS=N for N rounds (default 5).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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


PYTHON = str(Path(DEDUPD).with_name("python"))  # the venv's, as the dedupd script's
# `dedupd` as its console script runs it, then its own CPU time (the display's
# process, without the forked walker and hashers) written to BENCH_CPU_FD.
RUN_DEDUPD = """
import os, resource, sys
from dedupd.cli import main
rc = main(sys.argv[1:])
me = resource.getrusage(resource.RUSAGE_SELF)
os.write(int(os.environ["BENCH_CPU_FD"]), b"%.6f" % (me.ru_utime + me.ru_stime))
sys.exit(rc)
"""


@dataclass(frozen=True)
class Scan:
    wall: float  # seconds
    cpu: float  # CPU seconds (user + system) of dedupd and all its children
    cpu_self: float  # of the dedupd process alone: where the display draws
    drawn: int  # bytes written to the terminal


def scan_on_tty(root: Path, db: str, progress: bool) -> Scan:
    master, slave = os.openpty()
    drawn = [0]
    reader = threading.Thread(target=_drain, args=(master, drawn), daemon=True)
    reader.start()
    flag = "--progress" if progress else "--no-progress"
    r, w = os.pipe()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([PYTHON, "-c", RUN_DEDUPD, "scan", "--json", flag, "--db", db,
                        str(root)],
                       stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL,
                       pass_fds=(w,), env={**os.environ, "DEDUPD_PROGRESS_DELAY": DELAY,
                                           "BENCH_CPU_FD": str(w)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.close(w)
    cpu_self = os.read(r, 100)
    os.close(r)
    os.close(slave)
    reader.join(10)
    os.close(master)
    if p.returncode != 0 or not cpu_self:
        raise SystemExit(f"dedupd scan failed ({p.returncode})")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Scan(wall, cpu, float(cpu_self), drawn[0])


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
    runs: dict[bool, list[Scan]] = {True: [], False: []}
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="dedupd-bench-progress-", dir=BASE) as tmp:
        root = tree(Path(tmp))
        scan_on_tty(root, f"sqlite:///{tmp}/warm.db", False)  # warm the page cache
        for i in range(ROUNDS):
            for progress in ((True, False) if i % 2 == 0 else (False, True)):
                db = f"sqlite:///{tmp}/r{i}-{int(progress)}.db"
                runs[progress].append(scan_on_tty(root, db, progress))
                os.unlink(db.removeprefix("sqlite:///"))
    fixed, refresh = measure_display()
    report(runs, fixed, refresh)
    print(f"  ({load_before} before, {load()} after)")


def report(runs: dict[bool, list[Scan]], fixed: list[float], refresh: list[float]) -> None:
    from dedupd.progress_term import REFRESH_PER_SECOND

    med = statistics.median
    drawn = med([r.drawn for r in runs[True]])
    print(f"scan of {FILES} files, {ROUNDS} rounds, stderr on a pty, display drawn after "
          f"{DELAY} s ({drawn:.0f} bytes of progress drawn per scan)")
    what = (("wall", lambda r: r.wall), ("cpu, all", lambda r: r.cpu),
            ("cpu, dedupd alone", lambda r: r.cpu_self))
    print(f"  {'':22s}" + "".join(f"{w + ' best':>22s}{'median':>9s}" for w, _ in what))
    for progress, label in ((False, "--no-progress"), (True, "progress")):
        print(f"  {label:22s}" + "".join(
            f"{min(map(f, runs[progress])):21.3f}s{med(list(map(f, runs[progress]))):8.3f}s"
            for _, f in what))
    cells = []
    for _, f in what:
        for pick in (min, med):
            on, off = pick(list(map(f, runs[True]))), pick(list(map(f, runs[False])))
            cells.append(f"{(on - off) / off * 100:+{21 if pick is min else 8}.1f}%")
    print(f"  {'overhead (measured)':22s}" + "".join(cells))
    # the display's own cost, from fresh interpreters, against the same scans
    wall0, cpu0 = med([r.wall for r in runs[False]]), med([r.cpu for r in runs[False]])
    n = max(0.0, wall0 - float(DELAY)) * REFRESH_PER_SECOND
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
    if sys.argv[1:] == ["--probe"]:
        probe()
    else:
        main()
