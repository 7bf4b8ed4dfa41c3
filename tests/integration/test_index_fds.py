"""The index holds no file descriptor longer than it needs: a scan's record thread
opens a connection of its own, and a sqlite3 connection sits in a reference cycle
(its statement cache), so one that is not closed keeps its fds until the garbage
collector happens to run. The suite's open-file limits (a 100-fd test) met the
fds of earlier tests' indexes this way."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, scan
from tests.fixtures.procs import open_files


def _fds_of(db: Path) -> list[str]:
    return open_files(str(db))


@pytest.fixture
def no_gc() -> Iterator[None]:
    """What is closed must be closed by the code, not by the cycle collector."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _tree(root: Path) -> None:
    for k in range(6):
        (root / f"d{k}").mkdir(parents=True)
        (root / f"d{k}" / "a.bin").write_bytes(b"a" * 5000)
        (root / f"d{k}" / "own.bin").write_bytes(bytes([k + 1]) * 7000)


def test_a_closed_store_holds_no_fd_of_its_index(tmp_path: Path, no_gc: None) -> None:
    _tree(tmp_path / "t")
    db = tmp_path / "i.db"
    store = Store(f"sqlite:///{db}")
    rep = scan(store, [tmp_path / "t"], ScanOptions())
    assert len(rep.groups) == 1 and _fds_of(db)
    store.close()
    assert _fds_of(db) == []


def test_a_long_lived_store_does_not_gather_fds_scan_after_scan(tmp_path: Path,
                                                                 no_gc: None) -> None:
    _tree(tmp_path / "t")
    db = tmp_path / "i.db"
    store = Store(f"sqlite:///{db}")
    counts = []
    for k in range(6):
        (tmp_path / "t" / f"d{k}" / "new.bin").write_bytes(b"n" * (3000 + k))
        scan(store, [tmp_path / "t"], ScanOptions())
        counts.append(len(_fds_of(db)))
    # each scan's record thread had a connection; those of ended threads are closed
    assert counts[-1] == counts[1], counts
    store.close()
    assert _fds_of(db) == []

