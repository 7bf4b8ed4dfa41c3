"""Write transactions of several processes on one shared index never deadlock.

Before: on PostgreSQL each transaction took only row locks, as its statements
reached the rows, in whatever order they came: a scan's batch upserts its changed
inode rows in walk order and then marks the unchanged ones seen, while another
process's save_hashes updates the same rows in key order; the second of two such
transactions to close the cycle failed with "deadlock detected" (40P01), and its
`dedupd scan` exited 1 (test_attack_run_scan_at_once.py, under load). Two hosts
first taking their hash epoch at once failed with "tuple concurrently updated"
(two CREATE OR REPLACE FUNCTION of one function). Db.tx now takes one advisory
lock first (db.WRITE_LOCK): writers go one at a time, as on SQLite.
"""

from __future__ import annotations

import multiprocessing.synchronize
import threading
from functools import partial
from pathlib import Path

import pytest

from dedupd.files.fsid import HostIdentity
from dedupd.index import answers
from dedupd.index.store import Store
from tests.fixtures.postgres import fresh_database
from tests.fixtures.procs import at_once

pytestmark = pytest.mark.integration

FS, SCAN = 1, 1
A, B = 3, 7  # inode numbers: key order A, B
OVERLAP = 3.0  # seconds a transaction waits for the other to take its first row


def _row(ino: int) -> list[object]:
    # fs, ino, size, mtime_ns, ctime_delta, head, full, seen, unstable
    return [FS, ino, 10, 1000, 0, None, None, 0, 0]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_transactions_locking_inode_rows_in_opposite_orders_both_commit(
        request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> None:
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'db'}")
    store = Store(url, HostIdentity("host", "1" * 32))
    try:
        with store.db.tx() as c:
            store.bulk.upsert_inodes(c, [_row(A), _row(B)])
        first, second = threading.Event(), threading.Event()
        errors: list[BaseException] = []

        def record() -> None:  # a scan's batch: B changed (upserted), A unchanged (touched)
            try:
                with store.db.tx() as c:
                    store.bulk.upsert_inodes(c, [[FS, B, 11, 2000, 0, None, None, SCAN, 1]])
                    first.set()
                    second.wait(OVERLAP)  # before: the other transaction holds A by now
                    store.bulk.touch_inodes(c, SCAN, FS, [A])
            except BaseException as e:
                errors.append(e)

        def hashes() -> None:  # another process's save_hashes: key order, A then B
            try:
                first.wait(30)
                with store.db.tx() as c:
                    store.bulk.save_hashes(c, [(None, b"a" * 16, FS, A)])
                    second.set()
                    store.bulk.save_hashes(c, [(None, b"b" * 16, FS, B)])
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=f) for f in (record, hashes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        rows = store.db.rows('SELECT ino, size, "full", seen FROM inodes ORDER BY ino')
        assert [(r[0], r[1], bytes(r[2]), r[3]) for r in rows] == [
            (A, 10, b"a" * 16, SCAN), (B, 11, b"b" * 16, SCAN)]
    finally:
        store.close()


OPENERS = 4
ROUNDS = 4


def _epoch(url: str, k: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    store = Store(url, HostIdentity(f"host{k}", f"{k + 1:032x}"))
    barrier.wait(30)
    assert answers.epoch(store) is not None
    store.close()


def test_hosts_taking_their_hash_epoch_at_once_all_do(pg_server: str) -> None:
    for r in range(ROUNDS):
        url = fresh_database(pg_server)
        assert [(r, k, code) for k, code in at_once(partial(_epoch, url), OPENERS)] == []
