"""Attacks on the kept answer of an unchanged rescan (dedupd/index/answers.py): a
user's sequence of scans with other roots or options between two scans of one tree,
after which the tree lists exactly as it did, must never have the next scan report
anything but the tree's files under their current names."""

from __future__ import annotations

from pathlib import Path

from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan

SIZE = 9000


def put(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def run(db: Path, root: Path, **opts: object) -> ScanReport:
    store = Store(f"sqlite:///{db}")
    try:
        return scan(store, [str(root)], ScanOptions(**opts))  # type: ignore[arg-type]
    finally:
        store.close()


def names(rep: ScanReport) -> set[frozenset[bytes]]:
    return {frozenset(p for f in g.files for p in f.paths) for g in rep.groups}


def test_a_directory_id_given_to_another_path_is_never_reported(tmp_path: Path) -> None:
    """A directory row of the kept answer goes (a scan of it with an exclude that
    leaves it no name), SQLite gives its id to the next directory made (another
    tree), and the directory comes back under a new id (a scan of it alone): the
    tree lists as it did, every directory is skipped, but the answer's names must
    not be read through the reused id (they were: the other tree's path)."""
    db, r, o = tmp_path / "i.db", tmp_path / "r", tmp_path / "o"
    put(r / "f1", b"a" * SIZE)
    put(r / "z" / "f2", b"a" * SIZE)
    put(r / "z" / "f3", b"a" * SIZE)
    put(o / "g", b"g" * SIZE)
    want = {frozenset({bytes(r / "f1"), bytes(r / "z" / "f2"), bytes(r / "z" / "f3")})}
    assert names(run(db, r)) == want  # kept: r/z is the newest directory row
    assert names(run(db, r / "z", exclude=("f*",))) == set()  # r/z has no name: dropped
    run(db, o)  # o takes r/z's old id
    assert names(run(db, r / "z")) == {frozenset({bytes(r / "z" / "f2"),
                                                  bytes(r / "z" / "f3")})}
    rep = run(db, r)
    assert rep.stats["files_unchanged"] == 3 and rep.stats["files_new"] == 0
    assert names(rep) == want
