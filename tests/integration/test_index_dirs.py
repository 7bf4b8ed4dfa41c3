"""Per-directory change detection (issue #13): a directory whose listing did not
change since the last scan costs one digest compare and no write; after any
change the index and the groups equal those of a fresh scan."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan


def _tree(root: Path) -> None:
    for k in range(8):
        d = root / f"d{k}" / "sub"
        d.mkdir(parents=True)
        (d / "same.bin").write_bytes(b"s" * 5000)
        (d / f"own{k}.bin").write_bytes(bytes([k + 1]) * (6000 + k))
        (root / f"d{k}" / "pair.bin").write_bytes(b"%d" % (k % 3) * 3000)


def _shape(rep: ScanReport) -> list[list[bytes]]:
    return sorted(sorted(f.path for f in g.files) for g in rep.groups)


def _fresh(root: Path, tmp: Path, n: int) -> tuple[ScanReport, list[tuple[bytes, int]]]:
    store = Store(f"sqlite:///{tmp}/fresh{n}.db")
    rep = scan(store, [root], ScanOptions())
    names = [(p, ino) for p, ino, *_ in store.scan_paths()]
    store.close()
    return rep, names


def test_an_unchanged_tree_is_skipped_by_directory_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    store = Store(f"sqlite:///{tmp_path}/i.db")
    first = scan(store, [root], ScanOptions())
    seen = store.db.rows("SELECT max(seen), min(seen), count(*) FROM entries")[0]
    again = scan(store, [root], ScanOptions())
    assert again.stats["bytes_read"] == 0 and again.stats["files_unchanged"] == 24
    assert again.stats["files_new"] == again.stats["files_changed"] == 0
    assert _shape(again) == _shape(first) and len(first.groups) == 4
    # no per-file write: every name still carries the first scan's id
    assert store.db.rows("SELECT max(seen), min(seen), count(*) FROM entries")[0] == seen
    store.close()


def test_removed_replaced_and_new_files_and_directories_match_a_fresh_scan(
        tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    store = Store(f"sqlite:///{tmp_path}/i.db")
    scan(store, [root], ScanOptions())
    changes = [
        lambda: os.unlink(root / "d0" / "sub" / "same.bin"),  # a file removed
        lambda: shutil.rmtree(root / "d1"),  # a directory (and its subdirectory) removed
        lambda: (root / "d2" / "sub" / "same.bin").unlink() or  # a file replaced
        (root / "d2" / "sub" / "same.bin").write_bytes(b"t" * 5000),
        # a new copy of a file that was unique so far: that file must be read now
        lambda: (root / "d3" / "copy.bin").write_bytes(bytes([5]) * 6004),
        lambda: os.rename(root / "d4" / "sub", root / "d5" / "moved"),  # renamed across
    ]
    for n, change in enumerate(changes):
        change()
        rep = scan(store, [root], ScanOptions())
        want, names = _fresh(root, tmp_path, n)
        assert _shape(rep) == _shape(want), n
        assert [(p, ino) for p, ino, *_ in store.scan_paths()] == names, n
    assert rep.stats["files_unchanged"] > 0
    store.close()


def test_directories_made_by_another_connection_mid_scan_are_found_not_made_twice(
        tmp_path: Path) -> None:
    # A batch's new directories are inserted many to a statement (DirTree.ensure_many);
    # one made meanwhile by another connection (below a directory this scan made) is
    # found instead, and so are the directories below it.
    from dedupd.files.events import FileEvent

    root = tmp_path / "t"
    for sub in ("x", "x/y/z", "x/w"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "f").write_bytes(sub.encode())

    def events(*subs: str) -> list[FileEvent]:
        out = []
        for s in subs:
            p = os.fsencode(root / s / "f")
            out.append(FileEvent.from_stat(p, os.lstat(p)))
        return out

    url = f"sqlite:///{tmp_path}/i.db"
    ours, other = Store(url), Store(url)
    sid = ours.begin_scan([os.fsencode(root)])
    ours.record(sid, events("x"))
    other.record(other.begin_scan([os.fsencode(root)]), events("x/y/z"))
    ours.record(sid, events("x/y/z", "x/w"))
    names = ours.db.rows("SELECT name, count(*) FROM directories GROUP BY parent, name "
                         "HAVING count(*) > 1")
    assert names == []
    got = sorted((bytes(p), ino) for p, ino, *_ in ours.scan_paths())
    assert got == sorted((e.path, e.ino) for e in events("x", "x/y/z", "x/w"))
    ours.close()
    other.close()
