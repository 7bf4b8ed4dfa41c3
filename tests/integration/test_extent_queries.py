"""The extent-volume queries (dedupd/index/extents.py) give the same answers on
SQLite and on a real PostgreSQL: they are plain SQL written for both."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dedupd.index import extents as ix
from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, scan


def _tree(root: Path) -> None:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for name, data in (("a/x", b"1" * 5000), ("b/x", b"1" * 5000), ("a/y", b"2" * 5000),
                       ("a/z", b"3" * 7000), ("b/\xff odd", b"4" * 9000)):
        (root / os.fsdecode(name.encode("latin-1"))).write_bytes(data)
    (root / "a0").mkdir()  # sorts right after "a/": must stay outside the a/ range
    (root / "a0" / "w").write_bytes(b"1" * 5000)


def _exercise(url: str, root: Path) -> dict[str, Any]:
    store = Store(url)
    broot = os.fsencode(root)
    rep = scan(store, [root], ScanOptions())
    out: dict[str, Any] = {"groups": sorted(sorted(f.paths) for g in rep.groups for f in g.files)}
    out["below_a"] = sorted(p for p, _d, _n in store.paths_below(broot + b"/a"))
    out["pending"] = ix.pending_sizes(store, [broot], 1)
    files = [f for g in ix.files_of_sizes(store, [5000], [broot]) for f in g]
    out["size_5000"] = sorted(f.path for f in files)
    a, b = files[0], files[1]
    assert a.full is not None
    assert ix.full_hash(store, a.key) == a.full
    ix.set_refs(store, [(5000, a.full, a.key)])
    ix.set_refs(store, [(5000, a.full, b.key)])  # a newer choice replaces the older
    ix.mark_done(store, [(b.key, a.full, a.key, 5000)])
    ix.mark_done(store, [(b.key, a.full, a.key, 4096)])  # and a newer mark too
    ref, done = ix.group_state(store, 5000, a.full, [a.key, b.key])
    out["ref_is_b"] = ref == b.key
    out["done"] = {k == b.key: (v[0] == a.full, v[1] == a.key) for k, v in done.items()}
    out["stats"] = ix.volume_stats(store, broot)
    ix.maintain(store)
    out["reset"] = ix.reset_done_before(store, float("inf"))
    gone = [p for p, _d, _n in store.paths_below(broot) if p.endswith(b"/a/y")]
    out["forgot"] = store.forget_paths(gone)
    out["stats_after"] = ix.volume_stats(store, broot)
    store.close()
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _tree(tmp_path / "t")
    return tmp_path / "t"


def test_extent_queries_agree_on_sqlite_and_postgresql(tree: Path, tmp_path: Path,
                                                       pg_url: str) -> None:
    lite = _exercise(f"sqlite:///{tmp_path}/i.db", tree)
    pg = _exercise(pg_url, tree)
    assert lite == pg
    t = os.fsencode(tree)
    assert lite["below_a"] == [t + b"/a/x", t + b"/a/y", t + b"/a/z"]
    assert lite["size_5000"] == [t + b"/a/x", t + b"/a/y", t + b"/a0/w", t + b"/b/x"]
    assert lite["ref_is_b"] and lite["done"] == {True: (True, True)}
    assert lite["stats"] == {"files_indexed": 6, "paths_indexed": 6, "hashed": 4,
                             "duplicate_groups": 1, "duplicate_bytes": 10000,
                             "files_deduped": 1, "bytes_deduped": 4096}
    assert lite["reset"] == 1 and lite["forgot"] == 1
    assert lite["stats_after"]["files_indexed"] == 5
    assert lite["stats_after"]["files_deduped"] == 0
