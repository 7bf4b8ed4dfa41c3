"""A run leaves no reference cycles: it disables the collector while it runs (run.py),
so what it made must be freed by reference counting when it returns. A cycle
(the copy worker's callback, a method of the executor that holds the plan) kept
the plan and inventory until the next collection: 140,000 objects and 56 ms of
CPU after a 20,000-file import."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index.store import Store
from tests.fixtures.consolidate import write

pytestmark = pytest.mark.integration


def test_a_first_import_leaves_nothing_for_the_collector(tmp_path: Path) -> None:
    for i in range(300):  # duplicates (sorted as copied) and lone sizes
        write(tmp_path / "src" / f"d{i % 7}" / f"f{i}.bin", bytes([i % 50]) * (1000 + i % 40),
              "2015-01-01")
    (tmp_path / "archive").mkdir()
    cfg = ConsolidateConfig("g", (tmp_path / "src",), tmp_path / "archive")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        rep = consolidate(store, cfg, Options())
        assert rep.stats["files_copied"] == 200
        assert gc.collect() == 0
    finally:
        if was:
            gc.enable()
        store.close()
