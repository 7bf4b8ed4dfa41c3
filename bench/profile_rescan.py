"""Where an unchanged rescan's time goes, each part next to its bare cost.

Makes a fresh index of TREE (a first scan), then, best of ROUNDS (warm cache):
the interpreter alone, with what `dedupd scan` imports before it forks its walk,
and with all it imports; the index's reads
(known_digests, the kept answer, groups_under, which the kept answer replaces);
the walk in one process (CPU) next to a bare scandir + lstat loop, and in the
processes a rescan walks in (wall); and the whole `dedupd scan` rescan (wall). Not
part of `make bench`; run it when a rescan is slower than expected:

    .venv/bin/python bench/profile_rescan.py TREE
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import DEDUPD, ROOT

from dedupd import handles
from dedupd.files.events import WalkStats
from dedupd.index import answers
from dedupd.index.store import Store
from dedupd.scan.scanner import RESCAN_WALKERS
from dedupd.scan.walk import WalkOptions, normalize_roots, walk_listed
from dedupd.scan.walkproc import ForkedWalk

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
# a plain `dedupd scan` command line forks its walk before argparse (scan_first.py)
BEFORE_WALK = ["dedupd.cli", "dedupd.commands.scan_first", "dedupd.scan.walkproc"]
AFTER_WALK = ["argparse", "dedupd.commands.scan", "dedupd.scan.scanner", "dedupd.progress",
              "dedupd.output", "dedupd.files.fsid"]
PY = str(ROOT / ".venv" / "bin" / "python")


def best(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(ROUNDS):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def bare_walk(root: bytes) -> None:
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                e.stat(follow_symlinks=False)
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def main(tree: str) -> int:
    roots = normalize_roots([tree])
    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{d}/i.db"
        scan = [DEDUPD, "scan", "--json", "--no-progress", "--db", url, tree]
        run(scan)
        st = Store(url)
        known = st.known_digests(roots)
        key = kept_key(st)
        rows: list[tuple[str, float]] = [
            ("python -c pass (wall)", best(lambda: run([PY, "-c", "pass"]))),
            # what `dedupd scan` imports before it forks its walk, then all of it
            ("python + imports before the walk (wall)", best(lambda: run(
                [PY, "-c", f"import {', '.join(BEFORE_WALK)}"]))),
            ("python + all of scan's imports (wall)", best(lambda: run(
                [PY, "-c", f"import {', '.join(BEFORE_WALK + AFTER_WALK)}"]))),
            ("known_digests", best(lambda: st.known_digests(roots))),
            ("kept answer: read + unpack", best(lambda: unpack(st, key))),
            ("groups_under (what it replaces)", best(lambda: list(st.groups_under(roots, 1)))),
        ]
        with handles.anchored(roots):
            rows += [
                ("bare scandir + lstat (CPU)", best(lambda: bare_walk(roots[0]),
                                                    time.process_time)),
                ("walk_listed, one process (CPU)", best(lambda: list(walk_listed(
                    roots, WalkOptions(), WalkStats(), known)), time.process_time)),
                (f"walk, {RESCAN_WALKERS} processes (wall)", best(lambda: [b for b in ForkedWalk(
                    roots, WalkOptions(), 2000, known, RESCAN_WALKERS).batches()])),
            ]
        rows.append(("dedupd scan, unchanged rescan (wall)", best(lambda: run(scan))))
        st.close()
    print(f"{len(known)} directories under {tree}; best of {ROUNDS}, warm cache, "
          f"load {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for label, secs in rows:
        print(f"  {label:40} {secs:6.3f} s")
    return 0


def kept_key(st: Store) -> str:
    """The key of the one answer the first scan kept."""
    return str(st.db.rows('SELECT "key" FROM answers')[0][0])


def unpack(st: Store, key: str) -> None:
    kept = answers.kept(st, key)
    assert kept is not None and answers.unpack(st, kept.answer) is not None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else str(Path.cwd())))
