"""The backups table and its queries on both index backends (SQLite, PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dedupd.files.fsid import HostIdentity
from dedupd.index import backups as rows
from dedupd.index.db import SCHEMA_VERSION
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


def _start(store: Store, id: str, job: str = "j") -> None:
    rows.start(store, id=id, job=job, dataset="p/d", snapshot=f"p/d@{id}", guid=1,
               base_guid=None, created_snapshot=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_hosts_with_one_job_name_never_see_each_others_attempts(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    url = (f"sqlite:///{tmp_path}/i.db" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    a, b = Store(url, HostIdentity("nas1", "m-nas1")), Store(url, HostIdentity("box", "m-box"))
    try:
        _start(a, "a1")
        _start(b, "b1")
        assert rows.unfinished(a, "j").id == "a1"  # type: ignore[union-attr]
        assert rows.unfinished(b, "j").id == "b1"  # type: ignore[union-attr]
        rows.finish(b, "b1", "complete", chunks=1, total_size=5)
        rows.finish(b, "a1", "failed", error="not b's to finish")  # b cannot touch a's row
        assert rows.unfinished(b, "j") is None
        un = rows.unfinished(a, "j")
        assert un is not None and un.id == "a1" and un.state == "uploading" and un.error is None
        assert [r.id for r in rows.for_job(a, "j")] == ["a1"]
        assert [r.id for r in rows.for_job(b, "j")] == ["b1"]
        assert rows.get(a, "b1") is None and rows.get(b, "b1") is not None
    finally:
        a.close()
        b.close()


SCHEMA4_RELEASE = "7f493b3"  # the last dedupd whose backups rows had no host


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_backup_attempts_of_a_schema_4_index_become_the_upgrading_hosts(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    from tests.integration.test_index_identity import _old_dedupd

    url = (f"sqlite:///{tmp_path}/i.db" if backend == "sqlite"
           else request.getfixturevalue("pg_url"))
    old = _old_dedupd(tmp_path, SCHEMA4_RELEASE)
    code = ("from dedupd.index.store import Store\n"
            "from dedupd.index import backups as rows\n"
            "from dedupd.files.fsid import HostIdentity\n"
            f"s = Store({url!r}, HostIdentity('nas1', 'm-nas1'))\n"
            "rows.start(s, id='old1', job='j', dataset='p/d', snapshot='p/d@s', guid=2**64 - 1,"
            " base_guid=None, created_snapshot=True)\n"
            "assert rows.unfinished(s, 'j').id == 'old1'\n"
            "s.close()\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=old,
                   env=dict(os.environ, PYTHONPATH=str(old)))
    a = Store(url, HostIdentity("nas1", "m-nas1"))
    b = Store(url, HostIdentity("box", "m-box"))
    try:
        assert a.db.rows("SELECT value FROM meta WHERE host = 0 AND \"key\" = "
                         "'schema_version'")[0][0] == str(SCHEMA_VERSION)
        un = rows.unfinished(a, "j")
        assert un is not None and un.id == "old1" and un.guid == 2**64 - 1
        assert rows.unfinished(b, "j") is None and rows.get(b, "old1") is None
        _start(b, "b1")
        rows.finish(a, "old1", "complete", chunks=2, total_size=9)
        assert [(r.id, r.state) for r in rows.for_job(a, "j")] == [("old1", "complete")]
        assert [(r.id, r.state) for r in rows.for_job(b, "j")] == [("b1", "uploading")]
    finally:
        a.close()
        b.close()
