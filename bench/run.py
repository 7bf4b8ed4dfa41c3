"""`make bench`: run every bench/bench_*.py (or those named) and print their figures.

Each benchmark is a standalone script that prints its own table of ratios
against the rival tools; this runner only sequences them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    scripts = sorted(here.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if any(a in s.stem for a in argv)]
    failed = 0
    for s in scripts:
        print(f"=== {s.stem}", flush=True)
        failed += subprocess.run([sys.executable, str(s)]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
