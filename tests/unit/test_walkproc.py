"""The walk in several processes (walkproc.ForkedWalk, workers > 1): the same events,
directories and counters as in one, the tree shared while it is walked, and a
failure in any process reported without leaving one behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dedupd import handles, testpoints
from dedupd.files.events import FileEvent
from dedupd.forkpipe import ChildFailed
from dedupd.scan.walk import DirListed, WalkOptions, normalize_roots
from dedupd.scan.walkproc import ForkedWalk
from tests.fixtures.procs import children


def tree(root: Path, depth: int = 3, fanout: int = 4) -> None:
    dirs = [root]
    for _ in range(depth):
        dirs = [d / f"d{i}" for d in dirs for i in range(fanout)]
        for d in dirs:
            d.mkdir(parents=True)
            for j in range(3):
                (d / f"f{j}").write_bytes(os.fsencode(str(d))[-8:] * (j + 1))
            os.symlink("f0", d / "link")


def walked(root: Path, workers: int, known: dict[bytes, tuple[bytes, int]]
           ) -> tuple[list[FileEvent], list[DirListed], ForkedWalk]:
    roots = normalize_roots([root])
    with handles.anchored(roots):
        fw = ForkedWalk(roots, WalkOptions(), 16, known, workers)
        items = [e for b in fw.batches() for e in b]
    return ([e for e in items if isinstance(e, FileEvent)],
            [d for d in items if isinstance(d, DirListed)], fw)


def slow_subdirs(_point: str, _path: bytes) -> None:
    time.sleep(0.002)  # the walk outlasts the relay of the first subtree asked for


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_several_processes_walk_what_one_does(tmp_path: Path, workers: int) -> None:
    tree(tmp_path)
    _, first, _ = walked(tmp_path, 1, {})
    dev = os.lstat(tmp_path).st_dev
    known = {d.path: (d.digest, dev) for d in first}
    os.utime(tmp_path / "d1" / "d2" / "f1")  # one directory changed: its files come
    files, listed, one = walked(tmp_path, 1, known)
    with testpoints.acting(("walk.subdir",), slow_subdirs):
        pfiles, plisted, many = walked(tmp_path, workers, known)
    assert sorted(pfiles) == sorted(files) and len(files) == 3
    assert set(plisted) == set(listed) and len(plisted) == len(listed) == 1 + 4 + 16 + 64
    assert many.stats == one.stats and one.stats.dirs_seen == 85
    assert many.files == one.files == 85 * 3 - 3 and many.nbytes == one.nbytes
    assert many.relayed > 0  # the tree was shared


def test_a_failing_process_fails_the_walk_and_none_is_left(tmp_path: Path) -> None:
    tree(tmp_path, 2)
    _, first, _ = walked(tmp_path, 1, {})
    known = {d.path: (d.digest, os.lstat(tmp_path).st_dev) for d in first}
    calls = []
    before = set(children(os.getpid()))

    def fail_late(_point: str, path: bytes) -> None:
        calls.append(path)
        time.sleep(0.002)
        if path.endswith(b"d3/d3"):
            raise RuntimeError("injected")

    with testpoints.acting(("walk.subdir",), fail_late), \
            pytest.raises(ChildFailed, match="injected"):
        walked(tmp_path, 2, known)
    assert not calls  # the walk ran in the children, not here
    assert set(children(os.getpid())) <= before  # every walk process reaped


@pytest.mark.parametrize("at", [b"d0/d0", b"d3/d3", b"d2/d1"])
def test_a_process_killed_mid_walk_fails_it_without_a_hang(tmp_path: Path, at: bytes) -> None:
    """kill -9 of one walk process (whichever walks `at`, possibly a subtree another
    gave it): the walk fails at once, every other process ends and is reaped."""
    import signal

    tree(tmp_path, 2)
    _, first, _ = walked(tmp_path, 1, {})
    known = {d.path: (d.digest, os.lstat(tmp_path).st_dev) for d in first}
    before = set(children(os.getpid()))

    def killed(_point: str, path: bytes) -> None:
        time.sleep(0.002)
        if path.endswith(at):
            os.kill(os.getpid(), signal.SIGKILL)

    def hung(*_a: object) -> None:
        raise TimeoutError("the walk hangs")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        with testpoints.acting(("walk.subdir",), killed), \
                pytest.raises(ChildFailed, match="died"):
            walked(tmp_path, 4, known)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert set(children(os.getpid())) <= before
