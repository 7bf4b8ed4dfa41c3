"""The shortcuts of an unchanged rescan: it writes no row of the tree (a directory
without a file of its own is skipped on its digest alone), its finish forgets
nothing without looking (every directory with names was skipped unchanged), and
neither hides a change: a file put in such a directory, a directory or a root
file removed after an unchanged rescan, are all seen by the next one."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan

TABLES = ("directories", "entries", "inodes")


def put(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def tree(root: Path) -> None:
    # top and top/only-dirs hold no file of their own (fs 0 in the index)
    put(root / "only-dirs" / "a" / "x1", b"x" * 5000)
    put(root / "only-dirs" / "b" / "x2", b"x" * 5000)
    put(root / "c" / "y1", b"y" * 6000)
    put(root / "d" / "y2", b"y" * 6000)
    put(root / "d" / "tiny", b"")  # too small: listed, never recorded


def run(db: Path, *roots: Path) -> ScanReport:
    store = Store(f"sqlite:///{db}")
    try:
        return scan(store, [str(r) for r in roots], ScanOptions())
    finally:
        store.close()


def groups(rep: ScanReport) -> set[frozenset[bytes]]:
    return {frozenset(p for f in g.files for p in f.paths) for g in rep.groups}


def paths(root: Path, *names: str) -> frozenset[bytes]:
    return frozenset(bytes(root / n) for n in names)


def log_writes(db: Path) -> None:
    """Triggers that note every row written in the tree's tables."""
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE written (tbl TEXT)")
        for t in TABLES:
            for op in ("INSERT", "UPDATE", "DELETE"):
                c.execute(f"CREATE TRIGGER log_{t}_{op} AFTER {op} ON {t} "
                          f"BEGIN INSERT INTO written VALUES ('{t}'); END")


def written(db: Path) -> list[str]:
    with sqlite3.connect(db) as c:
        rows = [r[0] for r in c.execute("SELECT tbl FROM written")]
        c.execute("DELETE FROM written")
    return rows


def test_unchanged_rescan_writes_no_row(tmp_path: Path) -> None:
    root, db = tmp_path / "t", tmp_path / "i.db"
    tree(root)
    first = run(db, root)
    log_writes(db)
    again = run(db, root)
    assert written(db) == []
    assert groups(again) == groups(first) == {paths(root, "only-dirs/a/x1", "only-dirs/b/x2"),
                                              paths(root, "c/y1", "d/y2")}
    assert again.stats["files_unchanged"] == 4 and again.stats["bytes_read"] == 0


def test_a_file_put_where_there_was_none_is_seen(tmp_path: Path) -> None:
    root, db = tmp_path / "t", tmp_path / "i.db"
    tree(root)
    run(db, root)
    run(db, root)  # the directories without files are now skipped on their digest
    put(root / "only-dirs" / "x3", b"x" * 5000)
    put(root / "x4", b"x" * 5000)
    rep = run(db, root)
    assert paths(root, "only-dirs/a/x1", "only-dirs/b/x2", "only-dirs/x3", "x4") in groups(rep)
    assert rep.stats["files_new"] == 2


def test_what_goes_after_an_unchanged_rescan_is_forgotten(tmp_path: Path) -> None:
    root, db = tmp_path / "t", tmp_path / "i.db"
    tree(root)
    lone = tmp_path / "lone"
    put(lone, b"y" * 6000)
    run(db, root, lone)
    assert groups(run(db, root, lone)) == {paths(root, "only-dirs/a/x1", "only-dirs/b/x2"),
                                           frozenset({*paths(root, "c/y1", "d/y2"),
                                                      bytes(lone)})}
    shutil.rmtree(root / "only-dirs" / "b")
    lone.unlink()
    rep = run(db, root, lone)
    assert groups(rep) == {paths(root, "c/y1", "d/y2")}
    assert rep.stats["files_forgotten"] == 2
    store = Store(f"sqlite:///{db}")
    try:
        names = {bytes(r[0]) for r in store.db.rows("SELECT name FROM entries")}
        assert names == {b"x1", b"y1", b"y2"}
        assert store.dirs.find(bytes(root / "only-dirs" / "b")) is None
    finally:
        store.close()


def test_groups_read_beside_the_walk_are_not_reported_after_a_change(tmp_path: Path) -> None:
    """The groups a rescan reads while it walks (scanner.GroupsAhead) are those of the
    index before the walk: a rename the walk then records must not be reported
    from them."""
    root, db = tmp_path / "t", tmp_path / "i.db"
    tree(root)
    run(db, root)
    run(db, root)
    (root / "c" / "y1").rename(root / "c" / "y1-renamed")
    (root / "only-dirs" / "b" / "x2").unlink()
    rep = run(db, root)
    assert groups(rep) == {paths(root, "c/y1-renamed", "d/y2")}
    assert groups(run(db, root)) == groups(rep)
