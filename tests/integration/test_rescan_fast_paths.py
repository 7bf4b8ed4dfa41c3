"""The shortcuts of an unchanged rescan: it writes no row of the tree (a directory
without a file of its own is skipped on its digest alone), its finish forgets
nothing without looking (every directory with names was skipped unchanged), it
writes no scans row (so the index file is left as it was: no WAL made, synced and
checkpointed), and none of them hides a change: a file put in such a directory, a
directory or a root file removed after an unchanged rescan, are all seen by the
next one."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
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


def index_file(db: Path) -> tuple[bytes, int, int, int]:
    """The index file's bytes, mtime and size, and the bytes of its WAL (0: none,
    or nothing written in it: a connection still open keeps it until closed)."""
    st, wal = db.stat(), Path(f"{db}-wal")
    return db.read_bytes(), st.st_mtime_ns, st.st_size, wal.stat().st_size if wal.exists() else 0


def scans(db: Path) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute("SELECT count(*) FROM scans").fetchone()[0])


def cli_scan(db: Path, root: Path) -> subprocess.CompletedProcess[bytes]:
    """`dedupd scan` as the console entry runs it (its walk forked before argparse)."""
    code = "import sys; from dedupd.cli import run; sys.exit(run())"
    return subprocess.run([sys.executable, "-c", code, "scan", "--json", "--no-progress",
                           "--db", f"sqlite:///{db}", str(root)], capture_output=True,
                          check=True, timeout=120)


def test_an_unchanged_rescan_leaves_the_index_file_as_it_was(tmp_path: Path) -> None:
    root, db = tmp_path / "t", tmp_path / "i.db"
    tree(root)
    first = run(db, root)
    before = index_file(db)
    assert not before[3] and scans(db) == 1
    again = run(db, root)  # no scans row: the index is opened, read and closed
    assert index_file(db) == before
    assert again.scan_id == 0 and groups(again) == groups(first)
    out = cli_scan(db, root)
    assert index_file(db) == before and b'"files_unchanged": 4' in out.stdout
    # a change is recorded as before: the scan's row with it
    put(root / "c" / "y3", b"y" * 6000)
    rep = run(db, root)
    assert rep.scan_id > first.scan_id and scans(db) == 2
    assert rep.stats["files_new"] == 1
    assert paths(root, "c/y1", "c/y3", "d/y2") in groups(rep)
    after = index_file(db)
    assert run(db, root).stats["files_unchanged"] == 5 and index_file(db) == after


def test_an_unchanged_rescan_killed_leaves_the_index_as_it_was(tmp_path: Path) -> None:
    """kill -9 at the end of an unchanged rescan (where a changed one forgets names):
    the index file is untouched, and the next scans report and record as before."""
    root, db = tmp_path / "t", tmp_path / "i.db"
    tree(root)
    first = run(db, root)
    before = index_file(db)
    code = ("import os, signal\n"
            "from dedupd.index.store import Store\n"
            "from dedupd.scan.scanner import ScanOptions, scan\n"
            "def killed(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "Store.finish_scan = killed\n"
            f"scan(Store('sqlite:///{db}'), [{str(root)!r}], ScanOptions())\n")
    rc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ),
                        timeout=120).returncode
    assert rc == -signal.SIGKILL
    assert index_file(db)[:3] == before[:3]
    assert groups(run(db, root)) == groups(first)
    (root / "d" / "y2").unlink()
    rep = run(db, root)
    assert rep.stats["files_forgotten"] == 1 and groups(rep) == {
        paths(root, "only-dirs/a/x1", "only-dirs/b/x2")}
