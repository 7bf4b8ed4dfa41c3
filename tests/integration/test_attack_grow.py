"""A file grown after dedupd checked it must not make dedupd read the growth.

A user extends a file to any apparent size in no time and no space (`truncate -s
15T`: holes). The byte compares before a link (dedup/verify.py) and the streamed
copy of a large source into an archive (fsops/copy.py) read until the end of the
file, not to the size they had checked: a user who grew their own duplicates, or
the source being copied, right after dedupd opened and checked them, held the
volume's pass (or the consolidation) reading zeros for hours, as root. They now
read the checked size (plus one byte: growth shows) and refuse the file as changed.
Each case runs in a child process the test kills after LIMIT seconds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd import testpoints
from dedupd.cli import main
from tests.fixtures.attacker import User, reachable
from tests.fixtures.index import run_volume_pass

pytestmark = pytest.mark.integration
LIMIT = 60.0
MiB = 1 << 20


def _in_child(fn: Callable[[], int]) -> tuple[int | None, float]:
    """Run fn in a forked child (its own process group); (its exit code, or None when
    it was still running after LIMIT seconds and was killed; seconds taken)."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            os.setpgid(0, 0)
            code = fn()
        finally:
            os._exit(code)
    while time.monotonic() - t0 < LIMIT:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status), time.monotonic() - t0
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None, LIMIT


def test_duplicates_grown_while_compared_are_refused(tmp_path: Path, attacker: User) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    attacker.owns(vol)
    reachable(vol)
    attacker.run('head -c 1048576 /dev/urandom > "$1/a"; cp "$1/a" "$1/b"; cp "$1/a" "$1/c"',
                 str(vol))
    volume = {"kind": "plain", "path": str(vol), "mode": "dry-run", "settle_seconds": 0,
              "min_size": 1}
    run_volume_pass(volume, tmp_path / "db")  # hashed now: the next pass reads to compare
    volume["mode"] = "apply"
    seen: dict[bytes, int] = {}

    def grow(_point: str, path: bytes) -> None:
        # each name is re-stat'ed, looked at, then opened for the compare (its 3rd
        # time here): when the last is about to be opened, two are open and checked
        seen[path] = seen.get(path, 0) + 1
        both = [p for p, n in seen.items() if n == 3 and p != path]
        if seen[path] == 3 and len(both) == 2:
            attacker.run('truncate -s 15T "$1" "$2"', *map(os.fsdecode, both))

    def one_pass() -> int:
        with testpoints.acting(("verify",), grow):
            rep = run_volume_pass(volume, tmp_path / "db")
        return 0 if rep.counters.get("skips_changed", 0) >= 1 else 3

    code, took = _in_child(one_pass)
    assert code == 0, f"the pass was still reading the growth after {took:.0f}s" \
        if code is None else f"exit {code}: no file refused as changed"
    sizes = sorted(p.stat().st_size for p in vol.iterdir())
    assert sizes == [MiB, 15 << 40, 15 << 40]
    assert all(p.stat().st_nlink == 1 for p in vol.iterdir())  # nothing linked


def test_a_source_grown_while_copied_is_refused(tmp_path: Path, attacker: User) -> None:
    share, arch = tmp_path / "share", tmp_path / "archive"
    share.mkdir()
    arch.mkdir()
    attacker.owns(share)
    reachable(share)
    big = share / "big.img"
    attacker.run('head -c 20971520 /dev/urandom > "$1"', str(big))  # > KEEP_BYTES: streamed
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{share}"]\narchive = "{arch}"\n')

    def grow(_point: str, _path: bytes) -> None:  # the source is open and checked
        attacker.run('truncate -s 15T "$1"', str(big))

    def consolidate() -> int:
        with testpoints.acting(("mutate",), grow):
            return main(["consolidate", "v", "-c", str(cfg)])

    code, took = _in_child(consolidate)
    assert code is not None, f"the copy was still reading the growth after {took:.0f}s"
    assert code == 1  # not imported: a problem, not a hang and not a success
    assert big.stat().st_size == 15 << 40
    assert not [p for p in arch.rglob("*") if p.is_file() and p.name == "big.img"]
