"""A rescan hands its walk the index's digests before it writes its scan's row:
that first write of a closed index makes and syncs its WAL (milliseconds on a busy
disk), time in which the walk processes could not yet share the tree. The row is
written only by a rescan that records something (an unchanged one writes none:
test_rescan_fast_paths.py). A scan whose row cannot be written then still ends
its walk processes."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from dedupd.index.store import Store
from dedupd.scan.scanner import RESCAN_WALKERS, ScanOptions, scan
from dedupd.scan.walk import RECORD_BATCH, WalkOptions, normalize_roots
from dedupd.scan.walkchild import PUBLISHED
from dedupd.scan.walkproc import ForkedWalk
from tests.fixtures.procs import children


def _tree(root: Path) -> None:
    for d in range(4):
        for f in range(3):
            p = root / f"d{d}" / "deep" / f"f{f}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"same" if f == 0 else os.urandom(64))


def _walk(root: Path) -> ForkedWalk:
    """The walk as `dedupd scan` starts it: forked before the index is read."""
    return ForkedWalk(normalize_roots([root]), WalkOptions(), RECORD_BATCH,
                      workers=RESCAN_WALKERS, later=True)


def test_the_walk_has_its_digests_before_the_scans_row_is_written(tmp_path: Path) -> None:
    root, db = tmp_path / "t", tmp_path / "i.db"
    _tree(root)
    store = Store(f"sqlite:///{db}")
    try:
        first = scan(store, [str(root)], ScanOptions(), walking=_walk(root))
    finally:
        store.close()
    assert first.stats["groups"] == 1
    # the scans row now fails to be written, as a full disk would fail it, once the
    # rescan has a file to record
    with sqlite3.connect(db) as c:
        c.execute("CREATE TRIGGER no_scan BEFORE INSERT ON scans "
                  "BEGIN SELECT RAISE(ABORT, 'no scan row'); END")
    (root / "d3" / "deep" / "f3").write_bytes(os.urandom(65))  # a size of its own
    walking = _walk(root)
    pids = {pid for pid, _to, _frm in walking.procs}
    store = Store(f"sqlite:///{db}")
    try:
        with pytest.raises(sqlite3.IntegrityError, match="no scan row"):
            scan(store, [str(root)], ScanOptions(), walking=walking)
    finally:
        store.close()
    # handed over (ForkedWalk.start) before the row failed: not ABANDONED by close()
    assert walking.flag[1] == PUBLISHED
    # every walk process reaped (other tests' servers may be this process's children)
    assert walking.procs == [] and not pids & set(children(os.getpid()))
    with sqlite3.connect(db) as c:
        c.execute("DROP TRIGGER no_scan")
    store = Store(f"sqlite:///{db}")
    try:  # and the next rescan records the new file alone, its groups as before
        again = scan(store, [str(root)], ScanOptions(), walking=_walk(root))
    finally:
        store.close()
    assert again.stats["files_unchanged"] == 12 and again.stats["files_new"] == 1
    assert again.stats["bytes_read"] == 0  # nothing of its size to compare it with
    assert [[f.paths for f in g.files] for g in again.groups] == \
        [[f.paths for f in g.files] for g in first.groups]
