"""group_contents groups what index_trees recorded (inventory._recorded_groups) instead
of querying the index: the groups must be the query's (prov.files_by_size), order
included, whatever the batches cut apart (hardlinks), and on a re-run whose inodes
keep their hashes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd import handles
from dedupd.config import ConsolidateConfig
from dedupd.consolidate import inventory
from dedupd.consolidate.inventory import group_contents, index_trees
from dedupd.consolidate.roots import resolve_roots
from dedupd.index import provenance as prov
from dedupd.index.store import Store
from tests.fixtures.consolidate import write

pytestmark = pytest.mark.integration


def _tree(tmp_path: Path) -> ConsolidateConfig:
    s1, s2, archive = tmp_path / "s1", tmp_path / "s2", tmp_path / "archive"
    for i in range(12):  # sizes shared by 1-4 files, across shares and the archive
        write(s1 / f"d{i % 3}" / f"f{i}.bin", bytes([i % 4]) * (100 + i % 5), "2015-01-01")
        write(s2 / f"g{i}.bin", bytes([i % 3]) * (100 + i % 4), "2016-01-01")
    write(archive / "2015/01/f0.bin", b"\0" * 100, "2015-01-01")
    # hardlinks: names far apart in the walk, so in different batches of two events
    os.link(s1 / "d0" / "f0.bin", s1 / "d2" / "link-of-f0.bin")
    os.link(s1 / "d1" / "f1.bin", s2 / "zz-link-of-f1.bin")
    return ConsolidateConfig("r", (s1, s2), archive)


def test_recorded_groups_equal_the_index_query(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inventory, "RECORD_BATCH", 2)
    cfg = _tree(tmp_path)
    roots = resolve_roots(cfg)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with handles.anchored([*roots.sources, roots.archive]):
            for rerun in (False, True):
                inv = index_trees(store, cfg, roots)
                assert inv.recorded is not None
                linked = [f for f in inv.recorded.values() if len(f.paths) > 1]
                assert len(linked) == 2  # each inode with both its names
                got = inventory._recorded_groups(store, inv)
                assert got is not None and inv.recorded is None
                mine, query = list(got), list(prov.files_by_size(store, inv.scan_id))
                assert mine == query and len(query) >= 5
                assert any(f.full is not None for g in query for f in g) == rerun
                inv.recorded = {}  # as if used: group_contents asks the index itself
                group_contents(store, inv, defer=False)  # hashes the groups read
    finally:
        store.close()


def test_held_rows_or_nothing_recorded_ask_the_index(tmp_path: Path) -> None:
    cfg = _tree(tmp_path)
    roots = resolve_roots(cfg)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with handles.anchored([*roots.sources, roots.archive]):
            inv = index_trees(store, cfg, roots)
            store.hold_new_rows()
            assert inventory._recorded_groups(store, inv) is None
            store.release_held(inv.scan_id)
            assert inventory._recorded_groups(store, inv) is None  # recorded: used up
    finally:
        store.close()
