"""Shared helpers for benchmarks: timing commands, peak memory, dropping caches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.treegen builds the trees
DEDUPD = str(ROOT / ".venv" / "bin" / "dedupd")
WORK = Path(os.environ.get("DEDUPD_BENCH_DIR", "/var/tmp/dedupd-bench"))


@dataclass(frozen=True)
class Timed:
    seconds: float
    max_rss_kb: int
    stdout: bytes


def timed(argv: list[str], cwd: str | None = None) -> Timed:
    """Run a command to completion; wall time and its peak RSS (wait4 rusage)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    out, err = p.communicate()
    seconds = time.perf_counter() - t0
    # communicate() already reaped it; the children's rusage holds the peak of all of them
    import resource

    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({p.returncode}): {err.decode()[-2000:]}")
    return Timed(seconds, rss, out)


def peak_rss_kb(argv: list[str]) -> tuple[float, int, bytes]:
    """Wall time and the peak RSS of exactly this process (fork + wait4)."""
    t0 = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        errlog = os.open("/tmp/dedupd-bench-stderr.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(errlog, 2)
        os.execv(argv[0], argv)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status, ru = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        with open("/tmp/dedupd-bench-stderr.log") as f:
            raise SystemExit(f"{argv} failed: {f.read()[-3000:]}")
    return time.perf_counter() - t0, ru.ru_maxrss, b"".join(chunks)


def _tree_rss_kb(pid: int) -> int:
    """RSS of pid and its descendants now (0 once gone)."""
    total = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except (OSError, ValueError):
        return total
    return total + sum(_tree_rss_kb(k) for k in kids)


def tree_peak_rss_kb(argv: list[str]) -> tuple[float, int, int, bytes]:
    """peak_rss_kb plus the peak of the summed RSS of the process and its children
    (helper processes), sampled every 20 ms."""
    import threading

    peak = [0]
    stop = threading.Event()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    out, _ = proc.communicate()
    secs = time.perf_counter() - t0
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode})")
    import resource

    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return secs, largest, peak[0], out


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def warm(*roots: Path) -> None:
    """Read every file once so the page cache holds the trees."""
    subprocess.run(["find", *map(str, roots), "-type", "f", "-exec", "cat", "{}", "+"],
                   stdout=subprocess.DEVNULL, check=True)


def compile_dedupd(checkout: Path = ROOT) -> None:
    """Write the bytecode of checkout's dedupd, as an installed package has it: with
    PYTHONDONTWRITEBYTECODE set (as in some shells) every timed run would
    otherwise compile its modules again (0.07 s of a consolidation's start-up)."""
    import compileall

    compileall.compile_dir(str(checkout / "dedupd"), quiet=1, force=False)
