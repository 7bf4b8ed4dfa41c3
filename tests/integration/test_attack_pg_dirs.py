"""Two connections of one host making the same new directories, or the same
filesystem's row, at once on a shared PostgreSQL index (a `dedupd scan` while the
daemon's pass records the same tree; two scans of one tree): the second finds
what the first made, never fails.

Before: DirTree.ensure made a path whose nearest indexed ancestor it did not know
(the host's root on a fresh index, or a chain below a directory made by another
connection) with a plain INSERT after find() saw nothing. Under READ COMMITTED
that INSERT waited for the other connection's uncommitted row and then failed
with UniqueViolation on uq_directories_parent_name: `dedupd scan` printed a
traceback ("unexpected error (this is a bug)"). Seen with two concurrent first
scans of one tree on a fresh database: 3 runs of 3. FsMap._bind made a new
filesystem row the same way (uq_filesystems_host_ident: 2 runs of 4 once the
directories were fixed).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dedupd.index.store import Store

pytestmark = pytest.mark.integration


def _waiting_on_a_lock(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND datname = current_database()").fetchone()
        return int(row[0]) if row else 0


@pytest.mark.parametrize("made_first", ["/", "/srv"], ids=["fresh-index", "below-a-known-dir"])
def test_the_same_directories_made_by_two_connections_at_once(pg_url: str,
                                                              made_first: str) -> None:
    first, second = Store(pg_url), Store(pg_url)
    try:
        if made_first != "/":  # the host's root and /srv exist, committed
            with first.db.tx() as cur:
                first.dirs.ensure(cur, made_first.encode(), 0)
            second.dirs.find(made_first.encode())
        path = b"/srv/share/a/b"
        got: dict[str, Any] = {}

        def other() -> None:
            try:
                with second.db.tx() as cur:
                    got["id"] = second.dirs.ensure(cur, path, 0)
            except BaseException as e:  # the thread's outcome, checked below
                got["error"] = e

        t = threading.Thread(target=other)
        with first.db.tx() as cur:
            mine = first.dirs.ensure(cur, path, 0)  # made, not committed yet
            t.start()
            deadline = time.monotonic() + 30
            while not _waiting_on_a_lock(pg_url):  # the other waits for our rows
                assert t.is_alive(), got
                assert time.monotonic() < deadline, "the other connection never waited"
                time.sleep(0.05)
        t.join(30)
        assert "error" not in got, got.get("error")
        assert got["id"] == mine
        assert first.db.rows("SELECT count(*) FROM directories")[0][0] == 5  # / srv share a b
    finally:
        first.close()
        second.close()


def test_the_same_filesystem_met_by_two_connections_at_once(pg_url: str,
                                                           tmp_path: Path) -> None:
    import psycopg

    store = Store(pg_url)
    try:
        dev = os.stat(tmp_path).st_dev
        ident = store.fsmap._identify(dev, os.fsencode(tmp_path))  # what it will bind
        got: dict[str, Any] = {}

        def other() -> None:
            try:
                got["fs"] = store.fs_of(dev, os.fsencode(tmp_path))
            except BaseException as e:  # the thread's outcome, checked below
                got["error"] = e

        t = threading.Thread(target=other)
        with psycopg.connect(pg_url) as first:  # another connection, its row not committed
            mine = first.execute(
                "INSERT INTO filesystems (host, ident, fstype, mountpoint, stable) VALUES "
                "(%s, %s, %s, %s, %s) RETURNING id", (store.host, ident.ident, ident.fstype,
                                                      ident.mountpoint, int(ident.stable))
            ).fetchone()
            t.start()
            deadline = time.monotonic() + 30
            while not _waiting_on_a_lock(pg_url):
                assert t.is_alive(), got
                assert time.monotonic() < deadline, "the other connection never waited"
                time.sleep(0.05)
            first.commit()
        t.join(30)
        assert "error" not in got, got.get("error")
        assert mine is not None and got["fs"] == mine[0]
    finally:
        store.close()
