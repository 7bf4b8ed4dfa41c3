"""Unchanged `dedupd scan` rescans of one tree, this checkout against another, side by side.

Each side gets an index of its own (a first scan by that side), then ROUNDS rounds
alternate one rescan of each (A first in odd rounds, B first in even ones), warm
cache. Prints, per side, the wall and CPU (every process of the command, wait4's
rusage) as best / median, and the load average before and after. The other side
is a source tree of dedupd (e.g. `git archive main | tar -x -C /tmp/base`), run by
this checkout's interpreter with PYTHONPATH pointing at it. Not part of
`make bench`:

    .venv/bin/python bench/ab_rescan.py TREE OTHER_SRC [ROUNDS]
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


def main(tree: str, other: str, rounds: int) -> int:
    env_a = dict(os.environ)
    env_a.pop("PYTHONDONTWRITEBYTECODE", None)
    env_b = dict(env_a, PYTHONPATH=os.path.abspath(other))
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        sides = {}
        for name, env in (("A (this checkout)", env_a), (f"B ({other})", env_b)):
            argv = [DEDUPD, "scan", "--json", "--no-progress", "--db",
                    f"sqlite:///{d}/{len(sides)}.db", tree]
            for _ in range(2):  # the first scan, then one rescan (bytecode, caches)
                rescan(argv, env)
            sides[name] = (argv, env, [], [])
        for i in range(rounds):
            order = list(sides.items())
            for _name, (argv, env, walls, cpus) in order if i % 2 == 0 else order[::-1]:
                wall, cpu = rescan(argv, env)
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
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 15))
