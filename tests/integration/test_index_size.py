"""Index bytes per file (issue #13): no head hash for small files, compaction after a
scan that rewrote most of the index, and the upgrade from schema 3 that keeps every
full hash. Real scans through the CLI, real SQLite files."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from dedupd.hashing.read import WHOLE_READ
from dedupd.index.bulk import HEADLESS_MAX
from dedupd.index.db import SCHEMA_VERSION
from tests.integration.test_index_identity import (
    SCHEMA3_RELEASE,
    _groups,
    _old_dedupd,
    _old_scan,
    _version,
)
from tests.oracles import scan_json


def _tree(root: Path) -> None:
    """Pairs of small files (read whole) and pairs of large ones (head first)."""
    for k in range(4):
        d = root / f"d{k}"
        d.mkdir(parents=True)
        (d / "small.txt").write_bytes(b"s%d" % (k % 2) * 500)
        (d / "mid.bin").write_bytes(bytes([k % 2]) * (HEADLESS_MAX - 7))
        (d / "large.bin").write_bytes(b"L" * 9000 + bytes([k % 2]) * (HEADLESS_MAX * 2))
        (d / f"unique{k}.bin").write_bytes(bytes([k]) * (3000 + k))


def _hashes(db: Path) -> dict[int, tuple[int, int | None, bytes | None]]:
    with sqlite3.connect(db) as c:
        return {r[0]: (r[1], r[2], r[3]) for r in
                c.execute('SELECT ino, size, head, "full" FROM inodes')}


def test_the_head_rule_never_needs_a_dropped_head() -> None:
    # files up to HEADLESS_MAX are grouped by their full hash alone (hashing.rule)
    assert HEADLESS_MAX <= WHOLE_READ


def test_small_files_keep_only_their_full_hash_and_are_not_read_again(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    db = tmp_path / "i.db"
    first = scan_json(root, db=f"sqlite:///{db}")
    rows = _hashes(db)
    hashed = [r for r in rows.values() if r[2] is not None]
    assert len(hashed) == 12  # every file in a size pair
    assert all(head is None for size, head, _ in hashed if size <= HEADLESS_MAX)
    assert all(head is not None for size, head, _ in hashed if size > HEADLESS_MAX)
    again = scan_json(root, db=f"sqlite:///{db}")
    assert again["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert _groups(again) == _groups(first) and len(_groups(first)) == 6
    # a changed small file is read again and regrouped through its full hash only
    (root / "d0" / "small.txt").write_bytes(b"s1" * 500)
    third = scan_json(root, db=f"sqlite:///{db}")
    assert third["stats"]["bytes_read"] == 1000  # type: ignore[index]
    assert sorted(str(root / f"d{k}" / "small.txt") for k in (0, 1, 3)) in _groups(third)


def test_an_index_of_schema_3_is_upgraded_keeping_every_full_hash(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    db = tmp_path / "i.db"
    url = f"sqlite:///{db}"
    before = _old_scan(_old_dedupd(tmp_path, SCHEMA3_RELEASE), url, root)
    assert _version(db) == "3"
    old = _hashes(db)
    assert any(r[1] is not None and r[0] <= HEADLESS_MAX for r in old.values())
    after = scan_json(root, db=url)
    assert _version(db) == str(SCHEMA_VERSION)
    assert after["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert _groups(after) == _groups(before)
    new = _hashes(db)
    assert {k: r[2] for k, r in new.items()} == {k: r[2] for k, r in old.items()}
    assert {k: (None if r[0] <= HEADLESS_MAX and r[2] is not None else r[1])
            for k, r in old.items()} == {k: r[1] for k, r in new.items()}


def _compacted_size(db: Path, tmp: Path) -> int:
    """The size of a VACUUMed copy of db (after a checkpoint)."""
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = tmp / "copy.db"
    shutil.copy(db, copy)
    with sqlite3.connect(copy) as c:
        c.execute("VACUUM")
    return os.path.getsize(copy)


def test_a_scan_that_rewrote_most_of_the_index_leaves_it_compact(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for k in range(1500):  # more than COMPACT_MIN_ROWS, in many directories
        d = root / f"d{k % 60:02}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file-with-a-longish-name-{k}.txt").write_bytes(b"%d" % (k % 700) * 40)
    db = tmp_path / "i.db"
    scan_json(root, db=f"sqlite:///{db}")
    size = os.path.getsize(db)
    assert size == _compacted_size(db, tmp_path)
    for d in sorted(root.iterdir())[:45]:  # three quarters of the files go
        shutil.rmtree(d)
    doc = scan_json(root, db=f"sqlite:///{db}")
    assert doc["stats"]["files_forgotten"] == 1125  # type: ignore[index]
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert os.path.getsize(db) == _compacted_size(db, tmp_path) < size


def _fill(db: Path, table: str) -> float:
    """How full the pages of one of db's tables are (SQLite's dbstat)."""
    with sqlite3.connect(db) as c:
        used, size = c.execute("SELECT sum(pgsize - unused), sum(pgsize) FROM dbstat "
                               "WHERE name = ?", (table,)).fetchone()
    return float(used) / float(size)


def test_a_first_scan_of_an_index_within_its_size_budget_is_not_compacted(
        tmp_path: Path) -> None:
    """VACUUM costs about what writing the rows did, for the ~10% of its pages a
    scan leaves unused: an index already under COMPACT_ABOVE bytes a file is left
    as it is (it was rewritten after every first scan of more than 1000 files)."""
    root = tmp_path / "t"
    for k in range(12000):  # short names: a small index per file
        d = root / f"{k % 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{k}").write_bytes(b"%d" % (k % 11000))  # 1000 pairs
    db = tmp_path / "i.db"
    assert scan_json(root, db=f"sqlite:///{db}")["stats"]["files_new"] == 12000  # type: ignore[index]
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert os.path.getsize(db) <= 95 * 12000
    assert _fill(db, "inodes") < 0.95  # as the scan wrote it: not VACUUMed (~0.99)
