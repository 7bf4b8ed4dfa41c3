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

import multiprocessing
import os

import pytest

from dedupd.files.fsid import HostIdentity
from dedupd.index.store import Store

pytestmark = pytest.mark.integration

OPENERS = 3
ROUNDS = 6


def _open(url: str, k: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    try:
        barrier.wait(30)
        Store(url, HostIdentity(f"host{k}", f"{k:032x}")).close()
    except BaseException as e:  # the child's outcome is its exit status
        os.write(2, f"opener {k}: {e}\n".encode())
        os._exit(1)
    os._exit(0)


def _fresh(server: str, name: str) -> str:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


def test_processes_opening_a_fresh_index_at_once_all_open_it(pg_server: str) -> None:
    ctx = multiprocessing.get_context("fork")
    for r in range(ROUNDS):
        url = _fresh(pg_server, f"open{os.getpid()}_{r}")
        barrier = ctx.Barrier(OPENERS)
        procs = [ctx.Process(target=_open, args=(url, k, barrier)) for k in range(OPENERS)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        failed = [(r, k, p.exitcode) for k, p in enumerate(procs) if p.exitcode != 0]
        assert failed == []
        store = Store(url, HostIdentity("host0", f"{0:032x}"))
        try:
            assert len(store.db.rows("SELECT id FROM hosts")) == OPENERS
        finally:
            store.close()
