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
from dedupd.scan import walkchild
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


@pytest.mark.parametrize("hold", [1_000_000, 5])
def test_a_walk_started_before_its_digests_walks_what_one_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold: int) -> None:
    """ForkedWalk(later=True), as `dedupd scan` starts it: the walk goes ahead before
    the digests are read (holding what it lists: all of it, or HOLD_MAX entries and
    then it waits); once start() gives them, the same events, directories and
    counters as a walk that had them from the start."""
    monkeypatch.setattr(walkchild, "HOLD_MAX", hold)  # the walk processes inherit it
    tree(tmp_path)
    _, first, _ = walked(tmp_path, 1, {})
    known = {d.path: (d.digest, os.lstat(tmp_path).st_dev) for d in first}
    os.utime(tmp_path / "d1" / "d2" / "f1")  # one directory changed: its files come
    files, listed, one = walked(tmp_path, 1, known)
    roots = normalize_roots([tmp_path])
    with handles.anchored(roots):
        early = ForkedWalk(roots, WalkOptions(), 16, workers=4, later=True)
        time.sleep(0.2)  # the walk has listed (and held) the tree, or HOLD_MAX of it
        early.start(known)
        items = [e for b in early.batches() for e in b]
    assert sorted(e for e in items if isinstance(e, FileEvent)) == sorted(files)
    assert len(files) == 3
    early_listed = [d for d in items if isinstance(d, DirListed)]
    assert set(early_listed) == set(listed) and len(early_listed) == len(listed) == 85
    assert early.stats == one.stats and early.files == one.files


def test_a_first_scans_early_walk_is_one_process(tmp_path: Path) -> None:
    """No digests (a first scan): every file comes, walked by the first process alone
    (the others are there, and stopped unused: the feeders need the cores)."""
    tree(tmp_path, 2)
    files, listed, one = walked(tmp_path, 1, {})
    roots = normalize_roots([tmp_path])
    with handles.anchored(roots):
        early = ForkedWalk(roots, WalkOptions(), 16, workers=4, later=True)
        early.start({})
        items = [e for b in early.batches() for e in b]
    assert sorted(e for e in items if isinstance(e, FileEvent)) == sorted(files)
    assert len(files) == 20 * 3 and not any(d.same for d in listed)
    assert early.stats == one.stats and early.relayed == 0


def test_an_early_walk_whose_digests_never_come_ends(tmp_path: Path) -> None:
    """The scan failed before it read the index (bad config, index from a newer
    dedupd): close() ends every walk process, at once, holding or waiting."""
    tree(tmp_path, 2)
    before = set(children(os.getpid()))
    roots = normalize_roots([tmp_path])
    with handles.anchored(roots):
        for wait in (0.0, 0.2):  # still walking; done and waiting for the digests
            early = ForkedWalk(roots, WalkOptions(), 16, workers=4, later=True)
            time.sleep(wait)
            t = time.monotonic()
            early.close()
            assert time.monotonic() - t < 5
            assert set(children(os.getpid())) <= before


@pytest.mark.parametrize("waits", [False, True])
def test_no_more_processes_walk_than_cores_unless_the_walk_waits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, waits: bool) -> None:
    """A warm walk (no process blocks as it walks) stays in as many processes as there
    are cores (one here: nothing is handed over); one that blocks (a sleep in each
    subdirectory's open stands for the disk) is shared by all of them. Same events,
    directories and counters either way."""
    monkeypatch.setattr(walkchild, "CORES", 1)  # the walk processes inherit it
    tree(tmp_path)
    _, first, _ = walked(tmp_path, 1, {})
    known = {d.path: (d.digest, os.lstat(tmp_path).st_dev) for d in first}
    os.utime(tmp_path / "d1" / "d2" / "f1")
    files, listed, one = walked(tmp_path, 1, known)
    if waits:
        with testpoints.acting(("walk.subdir",), slow_subdirs):
            pfiles, plisted, many = walked(tmp_path, 4, known)
    else:
        pfiles, plisted, many = walked(tmp_path, 4, known)
    assert sorted(pfiles) == sorted(files) and len(files) == 3
    assert set(plisted) == set(listed) and len(plisted) == len(listed) == 85
    assert many.stats == one.stats and many.files == one.files
    assert (many.relayed > 0) == waits
