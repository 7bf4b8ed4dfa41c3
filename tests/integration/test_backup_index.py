"""The backups table and its queries on both index backends (SQLite, PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dedupd.index import backups as rows
from dedupd.index.store import Store

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    url = (f"sqlite:///{tmp_path}/i.db" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    s = Store(url)
    request.addfinalizer(s.close)
    return s


def test_attempt_lifecycle(store: Store) -> None:
    big = 2**64 - 3  # ZFS GUIDs use all 64 bits
    rows.start(store, id="a1", job="j", dataset="p/d", snapshot="p/d@s1", guid=big,
               base_guid=None, created_snapshot=True)
    rows.start(store, id="a2", job="j", dataset="p/d", snapshot="p/d@s2", guid=7,
               base_guid=big, created_snapshot=True)
    un = rows.unfinished(store, "j")
    assert un is not None and un.id == "a2" and un.base_guid == big
    rows.finish(store, "a2", "complete", chunks=3, total_size=12345)
    rows.finish(store, "a1", "failed", error="boom")
    assert rows.unfinished(store, "j") is None
    rows.mark_verified(store, "a2", "full", True)
    got = {r.id: r for r in rows.for_job(store, "j")}
    assert got["a1"].guid == big and got["a1"].state == "failed" and got["a1"].error == "boom"
    assert (got["a2"].chunks, got["a2"].total_size, got["a2"].verify_level) == (3, 12345,
                                                                               "full")
    assert rows.get(store, "nope") is None
