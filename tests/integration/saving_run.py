"""`python -m tests.integration.saving_run NAME N ARGS...`: the real CLI (`dedupd ARGS`)
in this process, where an editor saves NAME the atomic way (writes a new file next to
it, renames it over NAME) right at the N-th `mutate` test point on NAME. With
DEDUPD_TEST_KILL_AT_STEP, one run holds both a save and a kill -9; the save is noted
as "- editor save" in DEDUPD_TEST_STEP_LOG, between the steps it came between."""

from __future__ import annotations

import os
import sys

from dedupd import testpoints
from dedupd.cli import main

SAVED = b"saved by the editor\n" * 100


def save(name: bytes) -> None:
    new = os.path.join(os.path.dirname(name), b".editor-save.new")
    with open(new, "wb") as f:
        f.write(SAVED)
    os.rename(new, name)
    log = os.environ.get("DEDUPD_TEST_STEP_LOG")
    if log:
        with open(log, "a") as f:
            f.write("- editor save\n")


def run(name: bytes, n: int, args: list[str]) -> int:
    seen = 0

    def act(point: str, path: bytes) -> None:
        nonlocal seen
        if path == name:
            seen += 1
            if seen == n:
                save(name)

    with testpoints.acting(("mutate",), act):
        return main(args)


if __name__ == "__main__":
    sys.exit(run(os.fsencode(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
