"""Unchanged `dedupd scan` rescans of one tree by two source trees of dedupd, side by side.

Each side gets an index of its own (a first scan by that side), then ROUNDS rounds
alternate one rescan of each (A first in odd rounds, B first in even ones), warm
cache. Prints, per side, the wall and CPU (every process of the command, wait4's
rusage) as best / median, and the load average before and after. A side is a
source tree of dedupd (e.g. `git archive main | tar -x -C /tmp/base`; `.` for this
checkout), run by this checkout's interpreter and console entry with PYTHONPATH
pointing at it. Not part of `make bench`:

    .venv/bin/python bench/ab_rescan.py TREE A_SRC B_SRC [ROUNDS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import DEDUPD


def rescan(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU of the command and all its processes) of one run."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read() if p.stderr else b""
    if p.returncode != 0:
        raise SystemExit(f"{argv} failed ({p.returncode}): {err.decode()[-2000:]}")
    # wait4 counts the command and the children it reaped (the walk and feeders)
    return wall, ru.ru_utime + ru.ru_stime


def main(tree: str, a: str, b: str, rounds: int) -> int:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # both sides run from their bytecode
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        sides: dict[str, tuple[list[str], dict[str, str], list[float], list[float]]] = {}
        for name, src in ((f"A {a}", a), (f"B {b}", b)):
            argv = [DEDUPD, "scan", "--json", "--no-progress", "--db",
                    f"sqlite:///{d}/{len(sides)}.db", tree]
            side_env = dict(env, PYTHONPATH=os.path.abspath(src))
            for _ in range(2):  # the first scan, then one rescan (bytecode, caches)
                rescan(argv, side_env)
            sides[name] = (argv, side_env, [], [])
        for i in range(rounds):
            order = list(sides.items())
            for _name, (argv, side_env, walls, cpus) in order if i % 2 == 0 else order[::-1]:
                wall, cpu = rescan(argv, side_env)
                walls.append(wall)
                cpus.append(cpu)
    load1 = os.getloadavg()
    print(f"unchanged rescans of {tree}, {rounds} alternating rounds, warm cache; "
          f"load {load0[0]:.2f} -> {load1[0]:.2f}")
    for name, (_argv, _env, walls, cpus) in sides.items():
        print(f"  {name:40} wall {min(walls) * 1e3:5.0f} / {statistics.median(walls) * 1e3:5.0f} ms"
              f"   CPU {min(cpus) * 1e3:5.0f} / {statistics.median(cpus) * 1e3:5.0f} ms"
              "  (best / median)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1], sys.argv[2], sys.argv[3],
                          int(sys.argv[4]) if len(sys.argv) > 4 else 15))
