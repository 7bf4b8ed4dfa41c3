"""`dedupd scan`'s walk forked before argparse (commands/scan_first.py): taken by
the scan only when argparse reads the same roots and walk options; otherwise ended
and the right walk started; a usage error leaves no walk process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dedupd import handles
from dedupd.commands import scan_first
from dedupd.scan.walk import WalkOptions, normalize_roots
from tests.fixtures.procs import children, with_arg

# the console entry (cli.run), counting the walks made and noting sys.modules at
# the first fork
_CODE = """\
import sys
from dedupd import forkpipe
from dedupd.scan import walkproc
real, seen, walks = forkpipe.spawn, [], []
def spawn(work):
    seen.append(seen or sorted(sys.modules))
    return real(work)
forkpipe.spawn = spawn
init = walkproc.ForkedWalk.__init__
def counted(self, *a, **k):
    walks.append(1)
    init(self, *a, **k)
walkproc.ForkedWalk.__init__ = counted
import json, os
from dedupd import cli
real_exit = os._exit
def leave(rc):
    sys.stderr.write("\\n" + json.dumps([len(walks), seen[0] if seen else []]) + "\\n")
    sys.stderr.flush()
    real_exit(rc)
os._exit = leave
cli.run()
"""


def _run(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], int, set[str]]:
    r = subprocess.run([sys.executable, "-c", _CODE, "scan", *argv], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    walks, mods = json.loads(r.stderr.splitlines()[-1]) if r.returncode == 0 else (0, [])
    return r, walks, set(mods)


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "t"
    (tree / "d").mkdir(parents=True)
    for name in ("a", "d/b", "d/c"):
        (tree / name).write_bytes(b"same bytes" if name != "d/c" else b"other")
    return tree


def test_a_plain_scan_forks_its_walk_before_argparse_and_it_is_the_one_used(
        tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    db = f"sqlite:///{tmp_path}/i.db"
    for _ in range(2):  # a first scan, then an unchanged rescan
        r, walks, mods = _run(tmp_path, "--json", "--no-progress", "--db", db,
                              "--min-size=2", str(tree))
        assert r.returncode == 0, r.stderr
        assert walks == 1  # the early walk was taken, not made again
        assert "dedupd.scan.walk" in mods and "argparse" not in mods
        doc = json.loads(r.stdout)
        assert [g["paths"] for g in doc["groups"]] == [[str(tree / "a"), str(tree / "d/b")]]


@pytest.mark.parametrize("argv", [
    ("--min-size", "0x10"),  # no plain size: no early walk; argparse refuses it
    ("--min", "6"),  # an abbreviation: no early walk; argparse reads it
])
def test_a_command_line_not_read_early_scans_as_argparse_reads_it(
        tmp_path: Path, argv: tuple[str, ...]) -> None:
    tree = _tree(tmp_path)
    r, walks, _mods = _run(tmp_path, "--json", "--no-progress", "--db",
                           f"sqlite:///{tmp_path}/i.db", *argv, str(tree))
    if argv[1] == "0x10":
        assert r.returncode == 2 and "not a size" in r.stderr
        return
    assert r.returncode == 0, r.stderr
    assert walks == 1
    assert json.loads(r.stdout)["stats"]["too_small"] == 1  # "other" (5 bytes) < 6


def test_an_early_walk_of_other_roots_or_options_is_ended_not_taken(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    before = set(children(os.getpid()))
    roots = normalize_roots([tree])
    with handles.anchored(roots):
        scan_first.start(["scan", "--min-size", "2", str(tree)])
        assert scan_first.take(roots, WalkOptions(3)) is None  # other options: ended
        assert set(children(os.getpid())) <= before
        scan_first.start(["scan", str(tree / "d")])
        assert scan_first.take(roots, WalkOptions()) is None  # other roots: ended
        assert set(children(os.getpid())) <= before
        scan_first.start(["scan", "--exclude", "*.x", "--cross-mounts", str(tree)])
        walk = scan_first.take(roots, WalkOptions(1, ("*.x",), True))
        assert walk is not None  # the same: taken once
        assert scan_first.take(roots, WalkOptions(1, ("*.x",), True)) is None
        walk.close()
    assert set(children(os.getpid())) <= before


def test_a_usage_error_after_the_early_walk_leaves_no_walk_process(tmp_path: Path) -> None:
    """`scan a --json b` is read early (two paths); argparse refuses it: exit 2, and
    the walk processes end with the command (their parent's end of every pipe gone)."""
    tree = _tree(tmp_path)
    p = subprocess.Popen([sys.executable, "-c", _CODE, "scan", "--db",
                          f"sqlite:///{tmp_path}/i.db", str(tree), "--json", str(tree / "d")],
                         stderr=subprocess.PIPE, text=True)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "unrecognized arguments" in err
    # the walk processes (forks of it: its command line) are gone, or go at once
    mark = f"sqlite:///{tmp_path}/i.db".encode()
    deadline = time.monotonic() + 10
    while (left := with_arg(mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left


@pytest.mark.parametrize(("argv", "read"), [
    (["scan", "a"], (["a"], 1, (), False)),
    (["scan", "--min-size", "64K", "--exclude=*.tmp", "--cross-mounts", "a", "b"],
     (["a", "b"], 65536, ("*.tmp",), True)),
    (["scan", "--db=sqlite:///x", "-c", "f", "--settle", "3", "--json", "a"],
     (["a"], 1, (), False)),
    (["scan", "--min-size", "2GiB", "a"], None),  # parse_size's, not a plain form
    (["scan", "--", "a"], None),
    (["scan", "-h"], None),
    (["scan", "--db"], None),
    (["scan", "--exclude", "-x", "a"], None),
    (["scan", "--json"], None),
    (["status"], None),
])
def test_what_is_read_early(argv: list[str], read: object) -> None:
    assert scan_first._read(argv) == read
