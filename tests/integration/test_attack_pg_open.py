"""Several processes opening one fresh PostgreSQL index at once (hosts of a shared
inventory started together; the daemon and a `dedupd scan`): every one opens it.

Before: each saw no schema and ran CREATE TABLE IF NOT EXISTS; PostgreSQL does
not make that safe against a concurrent one (both see no table, the second's
catalog row collides), so all but one failed with "duplicate key value violates
unique constraint pg_type_typname_nsp_index" (two concurrent first scans of a
fresh database: 5 runs of 8). migrate.open_index now takes an advisory lock
there: one process at a time checks and creates the schema.
"""

from __future__ import annotations

import multiprocessing.synchronize
from functools import partial

import pytest

from dedupd.files.fsid import HostIdentity
from dedupd.index.store import Store
from tests.fixtures.postgres import fresh_database
from tests.fixtures.procs import at_once

pytestmark = pytest.mark.integration

OPENERS = 3
ROUNDS = 6


def _open(url: str, k: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait(30)
    Store(url, HostIdentity(f"host{k}", f"{k:032x}")).close()


def test_processes_opening_a_fresh_index_at_once_all_open_it(pg_server: str) -> None:
    for r in range(ROUNDS):
        url = fresh_database(pg_server)
        failed = [(r, k, code) for k, code in at_once(partial(_open, url), OPENERS)]
        assert failed == []
        store = Store(url, HostIdentity("host0", f"{0:032x}"))
        try:
            assert len(store.db.rows("SELECT id FROM hosts")) == OPENERS
        finally:
            store.close()
