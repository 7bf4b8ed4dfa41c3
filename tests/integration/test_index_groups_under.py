"""Store.groups_under (what an unchanged rescan reports from the index) gives the
same answer whether it finds the shared sizes from the whole filesystems' inode
rows (the roots hold most of their directories) or from the names under the roots
only: the rule, computed here by hand from the index's rows, on SQLite and on a
real PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.index.dirs import subtree_sql
from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, scan


def _tree(top: Path, outside_dirs: int) -> None:
    a, b = top / "a", top / "b"
    for d in ("a1", "a2", "a3", "a4"):
        (a / d).mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "a1" / "dup.bin").write_bytes(b"x" * 5000)  # a pair under a
    (a / "a2" / "dup.bin").write_bytes(b"x" * 5000)
    (a / "a3" / "hl1.bin").write_bytes(b"y" * 7000)  # one inode, two names under a
    os.link(a / "a3" / "hl1.bin", a / "a3" / "hl2.bin")
    (b / "y.bin").write_bytes(b"y" * 7000)  # its copy is outside a
    (a / "a4" / "z.bin").write_bytes(b"z" * 8000)  # a pair only with b
    (b / "z.bin").write_bytes(b"z" * 8000)
    (a / "a1" / "n.bin").write_bytes(b"n" * 9000)  # same size, other content;
    (a / "a2" / "m.bin").write_bytes(b"m" * 9000)  # n's hash is dropped below
    (a / "a4" / "u.bin").write_bytes(b"u" * 9500)  # unhashed, its size mate outside
    (b / "v.bin").write_bytes(b"v" * 9500)
    (a / "a1" / "p.bin").write_bytes(b"p" * 9900)  # a pair, a third of its size
    (a / "a2" / "p.bin").write_bytes(b"p" * 9900)  # under a, and an unhashed one
    (a / "a3" / "q.bin").write_bytes(b"q" * 9900)  # of that size outside
    (b / "w.bin").write_bytes(b"w" * 9900)
    for k in range(outside_dirs):
        (b / f"c{k}").mkdir()
        (b / f"c{k}" / "own.bin").write_bytes(bytes([k + 1]) * (20000 + k))


def _expected(store: Store, root: bytes) -> list[list[bytes]]:
    """The rule by hand: of the names under root, the sizes with 2+ inodes one of
    which has no full hash, and the (size, full hash) pairs of 2+ inodes."""
    rows = store.db.rows('SELECT d.id, e.name, d.fs, e.ino, i.size, i."full" FROM entries e '
                         "JOIN directories d ON d.id = e.dir JOIN inodes i ON i.fs = d.fs "
                         "AND i.ino = e.ino")
    dirs = store.dirs.paths({int(r[0]) for r in rows})
    under = [(dirs[r[0]] + b"/" + bytes(r[1]), (r[2], r[3]), r[4],
              None if r[5] is None else bytes(r[5])) for r in rows
             if dirs[r[0]] == root or dirs[r[0]].startswith(root + b"/")]
    by_size: dict[int, set[tuple[int, int]]] = {}
    unhashed: set[int] = set()
    by_pair: dict[tuple[int, bytes], set[tuple[int, int]]] = {}
    for _p, k, size, full in under:
        by_size.setdefault(size, set()).add(k)
        if full is None:
            unhashed.add(size)
        else:
            by_pair.setdefault((size, full), set()).add(k)
    out: dict[int, list[bytes]] = {}
    for p, _k, size, full in under:
        if (size in unhashed and len(by_size[size]) > 1) or (
                full is not None and len(by_pair[(size, full)]) > 1):
            out.setdefault(size, []).append(p)
    return sorted(sorted(v) for v in out.values())


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
@pytest.mark.parametrize("outside_dirs", [0, 8])  # a holds most directories, or not
def test_groups_under_follow_the_rule_on_either_plan(
        tmp_path: Path, db: str, outside_dirs: int, request: pytest.FixtureRequest) -> None:
    top = tmp_path / "t"
    _tree(top, outside_dirs)
    url = f"sqlite:///{tmp_path}/i.db" if db == "sqlite" else request.getfixturevalue("pg_url")
    store = Store(url)
    scan(store, [top], ScanOptions())
    fs = store.db.rows("SELECT fs FROM directories WHERE fs > 0")[0][0]
    for name in (b"a1/n.bin", b"a4/u.bin", b"b/w.bin"):  # as if changed since hashed
        path = bytes(top) + b"/" + (name if name.startswith(b"b/") else b"a/" + name)
        store.db.run(f'UPDATE inodes SET "full" = NULL, head = NULL WHERE fs = {store.db.p} '
                     f"AND ino = {store.db.p}", (fs, os.stat(path).st_ino))
    root = bytes(top / "a")
    got = sorted(sorted(p for f in g for p in f.paths)
                 for g in store.groups_under([root], 1))
    want = _expected(store, root)
    assert got == want
    assert sorted(os.path.basename(p) for g in want for p in g) == sorted(
        [b"dup.bin", b"dup.bin", b"m.bin", b"n.bin", b"p.bin", b"p.bin"])
    wide = store._filesystems_mostly_under(*subtree_sql(store.db, [store.dirs.find(root)]))
    assert (wide is not None) == (outside_dirs == 0)
    store.close()


def test_listing_gives_each_directory_once_with_its_path_for_nested_roots(
        tmp_path: Path) -> None:
    top = tmp_path / "t"
    _tree(top, 3)
    store = Store(f"sqlite:///{tmp_path}/i.db")
    scan(store, [top], ScanOptions())
    fresh = Store(f"sqlite:///{tmp_path}/i.db")  # nothing cached but what find() caches
    roots = [bytes(top / "b"), bytes(top), bytes(top / "a" / "a1")]
    got = fresh.dirs.listing(roots)
    assert sorted((i, fs) for i, fs, _p, _g in got) == sorted(fresh.dirs.subtree(roots))
    paths = {p for _i, _fs, p, _g in got}
    want = {bytes(top)} | {os.fsencode(d) for d, _s, _f in os.walk(top) if d != str(top)}
    assert paths == want and len(got) == len(want)
    assert {i: p for i, _fs, p, _g in got} == store.dirs.paths([i for i, *_ in got])
    store.close()
    fresh.close()
