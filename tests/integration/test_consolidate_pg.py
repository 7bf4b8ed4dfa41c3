"""Consolidation with the shared PostgreSQL index: provenance rows and re-runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index import provenance as prov
from dedupd.index.store import Store
from tests.fixtures.consolidate import jpeg, write

pytestmark = pytest.mark.integration


def test_consolidate_on_postgres(tmp_path: Path, pg_url: str) -> None:
    s1, s2, archive = tmp_path / "s1", tmp_path / "s2", tmp_path / "archive"
    archive.mkdir()
    photo = jpeg((4, 4, 4), "2010:10:10 10:10:10")
    write(s1 / "a.jpg", photo, "2011-01-01")
    write(os.path.join(os.fsencode(s2), b"\xe9t\xe9.jpg"), photo, "2012-01-01")
    write(s2 / "b.bin", os.urandom(50_000), "2013-03-03")
    cfg = ConsolidateConfig("pg", (s1, s2), archive)
    store = Store(pg_url)
    try:
        rep = consolidate(store, cfg, Options())
        assert rep.stats["files_copied"] == 2 and rep.stats["problems"] == 0
        target = os.fsencode(archive / "2010/10/a.jpg")
        srcs = sorted(p.source_path for p in prov.sources_of(store, target))
        assert srcs == [os.fsencode(s1 / "a.jpg"), os.fsencode(s2) + b"/\xe9t\xe9.jpg"]
        again = consolidate(store, cfg, Options())
        assert again.stats["files_copied"] == 0 and again.stats["bytes_read"] == 0
        assert prov.count(store, "pg") == 3
    finally:
        store.close()
