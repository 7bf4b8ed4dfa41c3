"""index_trees' walk runs in a forked process (consolidate/treewalk.py): its batches,
counters, problems and progress must be those of the walk in the run itself, and
a walk process killed -9, or a run killed -9 under its walk, must end cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from dedupd import handles, testpoints
from dedupd.cli import main
from dedupd.config import ConsolidateConfig
from dedupd.consolidate import inventory
from dedupd.consolidate.roots import resolve_roots, walk_parts
from dedupd.consolidate.treewalk import TreeWalk
from dedupd.files.events import FileEvent, WalkStats
from dedupd.scan.walk import batches
from tests.fixtures.consolidate import write, write_config
from tests.fixtures.procs import gone_within

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
Walked = list[tuple[int, list[FileEvent], int]]  # (part, batch, files_seen after it)


def _tree(tmp_path: Path) -> tuple[ConsolidateConfig, Path]:
    """Sources with every kind of entry a walk counts, an include and an exclude
    pattern, a quarantine directory inside a share, and a non-empty archive.
    Returns the config and a directory the test swaps for a symlink mid-walk."""
    s1, s2, archive = tmp_path / "s1", tmp_path / "s2", tmp_path / "archive"
    for i in range(9):
        write(s1 / f"d{i % 3}" / f"f{i}.jpg", bytes([i]) * (10 + i), "2015-01-01")
        write(s1 / f"d{i % 3}" / f"n{i}.txt", b"t" * (3 + i), "2015-01-01")  # not included
        write(s2 / f"g{i}.jpg", bytes([i]) * (10 + i), "2016-01-01")
    write(s1 / "empty.jpg", b"", "2015-01-01")  # too small
    write(s1 / "skip" / "x.jpg", b"x" * 50)  # excluded
    write(s1 / "q" / "kept.jpg", b"q" * 50)  # the quarantine directory
    write(s2 / "swapped" / "s.jpg", b"s" * 50)
    os.symlink(s1 / "d0" / "f0.jpg", s1 / "link.jpg")
    os.mkfifo(s2 / "fifo.jpg")
    os.link(s1 / "d0" / "f0.jpg", s2 / "hard.jpg")
    write(archive / "2015" / "01" / "a.jpg", b"a" * 30, "2015-01-01")
    write(archive / ".dedupd-copy.1.tmp", b"partial")  # never archive content
    cfg = ConsolidateConfig("t", (s1, s2), archive, include=("*.jpg",), exclude=("skip",),
                            quarantine_dir=s1 / "q")
    return cfg, s2 / "swapped"


def _swapping(d: Path) -> AbstractContextManager[None]:
    """A walk that reaches d finds a symlink in its place (a path_changed problem)."""
    def swap(_point: str, path: bytes) -> None:
        if path == os.fsencode(d) and not d.is_symlink():
            d.rename(d.with_name("away"))
            d.symlink_to(d.with_name("away"))
    return testpoints.acting(("walk.subdir",), swap)


def _unswap(d: Path) -> None:
    d.unlink()
    d.with_name("away").rename(d)


def test_the_forked_walk_is_the_walk_in_the_run(tmp_path: Path) -> None:
    cfg, swapped = _tree(tmp_path)
    roots = resolve_roots(cfg)
    with handles.anchored([*roots.sources, roots.archive]):
        here, in_run = WalkStats(), []
        with _swapping(swapped):
            for k, events in enumerate(walk_parts(roots, cfg)(here)):
                in_run += [(k, b, here.files_seen) for b in batches(events, 3)]
        _unswap(swapped)
        there, forked = WalkStats(), []
        with _swapping(swapped):  # the hook acts in the walk's process (inherited)
            walking = TreeWalk(walk_parts(roots, cfg), 3)
            try:
                forked = [(k, b, there.files_seen) for k, b in walking.batches(there)]
            finally:
                walking.close()
    assert forked == in_run and len(forked) > 4
    assert {k for k, _b, _n in forked} == {0, 1}
    assert all(type(e) is FileEvent for _k, b, _n in forked for e in b)
    assert there == here  # every counter, and the problems in their order
    assert here.excluded >= 11 and here.symlinks == 1 and here.special_files == 1
    assert here.too_small == 1 and [p.reason for p in here.problems] == ["path_changed"]


def test_index_trees_reports_the_walk_as_before(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress after each recorded batch with the files seen so far; the archive's
    paths; the counters."""
    from dedupd.index.store import Store

    monkeypatch.setattr(inventory, "RECORD_BATCH", 4)
    cfg, _swapped = _tree(tmp_path)
    roots = resolve_roots(cfg)
    here = WalkStats()
    expected = []
    with handles.anchored([*roots.sources, roots.archive]):
        for events in walk_parts(roots, cfg)(here):
            expected += [("walk", here.files_seen, 0) for _b in batches(events, 4)]
        shown: list[tuple[str, int, int]] = []
        store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
        try:
            inv = inventory.index_trees(store, cfg, roots,
                                        lambda *a: shown.append((a[0], a[1], a[2])))
        finally:
            store.close()
    assert shown == expected and len(shown) > 5
    assert inv.walk == here
    assert inv.archive_paths == {os.fsencode(cfg.archive / "2015" / "01" / "a.jpg")}


def _import(tmp_path: Path) -> tuple[Path, Path, Path]:
    src, archive = tmp_path / "s", tmp_path / "archive"
    for d in range(4):
        for i in range(5):
            write(src / f"d{d}" / f"f{i}.bin", os.urandom(1000 + i), "2019-01-01")
    archive.mkdir()
    return write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "x", [src], archive), \
        src, archive


def test_a_walk_killed_is_a_clear_error_and_a_rerun_imports_all(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, src, archive = _import(tmp_path)
    me = os.getpid()

    def die(_point: str, path: bytes) -> None:
        if path.endswith(b"/d2") and os.getpid() != me:  # the walk's process only
            os.kill(os.getpid(), signal.SIGKILL)

    with testpoints.acting(("walk.subdir",), die):
        rc = main(["consolidate", "-c", str(cfg), "x"])
    err = capsys.readouterr().err
    assert rc == 1 and "dedupd: error: the walk failed: its process died" in err, err
    assert "Traceback" not in err
    assert not list(archive.rglob("*.bin"))  # nothing copied from half a walk
    assert main(["consolidate", "-c", str(cfg), "x", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["stats"]["files_copied"] == 20 and rep["stats"]["problems"] == 0
    assert len(list(archive.rglob("*.bin"))) == 20


def test_the_walk_ends_with_its_run_killed(tmp_path: Path) -> None:
    """A kill -9 of the run while its walk goes on leaves no walk process behind."""
    cfg, _src, _archive = _import(tmp_path)
    pidfile = tmp_path / "walk.pid"
    code = ("import os, signal, sys\n"
            "from dedupd import testpoints\n"
            "from dedupd.cli import main\n"
            "me = os.getpid()\n"
            "def kill_run(_point, path):\n"
            "    if os.getpid() != me and path.endswith(b'/d1'):\n"
            f"        open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
            "        os.kill(me, signal.SIGKILL)\n"
            "with testpoints.acting(('walk.subdir',), kill_run):\n"
            f"    main(['consolidate', '-c', {str(cfg)!r}, 'x'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    pid = int(pidfile.read_text())
    assert gone_within(pid, 20), "the walk outlived its run"

