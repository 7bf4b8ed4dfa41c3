"""A Store's cached directory ids (index/dirs.py) against another process that drops
a directory row in the middle of its pass: the daemon's pass has recorded r/z's
first file (r/z's id cached), a user's own `dedupd scan` of r/z with an exclude
leaves r/z no name (its row dropped), a scan of another tree o makes o's row, and
SQLite gives o the dropped id. The pass's next batch (r/z's second file) must be
recorded under r/z, never into o's row (`dedupd where` and the groups named
o/f3, a file that is not there)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dedupd.index.store import Store
from dedupd.scan.walk import WalkOptions, WalkStats, normalize_roots, walk

pytestmark = pytest.mark.integration


def _put(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _scan(db: Path, *args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "dedupd", "scan", "--db", f"sqlite:///{db}",
                        *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _entries(store: Store, d: Path) -> set[bytes]:
    did = store.dirs.find(bytes(d))
    assert did is not None
    return {bytes(n) for (n,) in store.db.rows(
        f"SELECT name FROM entries WHERE dir = {store.db.p}", (did,))}


def test_a_directory_id_reused_by_another_process_mid_pass(tmp_path: Path) -> None:
    db, r, o = tmp_path / "i.db", tmp_path / "r", tmp_path / "o"
    _put(r / "z" / "f2", b"a" * 9000)
    _put(r / "z" / "f3", b"a" * 9000)
    _put(o / "g", b"g" * 9000)
    _scan(db, str(r))
    daemon = Store(f"sqlite:///{db}")
    try:
        roots = normalize_roots([str(r)])
        daemon.prepare_scan(roots)
        scan_id = daemon.begin_scan(roots, prepared=True)
        events = sorted(walk(roots, WalkOptions(), WalkStats()), key=lambda e: e.path)
        assert [os.path.basename(e.path) for e in events] == [b"f2", b"f3"]
        daemon.record(scan_id, events[:1])  # r/z's id cached
        before = daemon.dirs.find(bytes(r / "z"))
        _scan(db, "--exclude", "f*", str(r / "z"))  # r/z's row dropped
        _scan(db, str(o))  # o made
        other = Store(f"sqlite:///{db}")
        try:
            assert other.dirs.find(bytes(r / "z")) is None
            assert other.dirs.find(bytes(o)) == before  # SQLite gave o r/z's id
        finally:
            other.close()
        daemon.record(scan_id, events[1:])
    finally:
        daemon.close()
    after = Store(f"sqlite:///{db}")
    try:
        assert _entries(after, o) == {b"g"}
        assert _entries(after, r / "z") == {b"f3"}
    finally:
        after.close()
