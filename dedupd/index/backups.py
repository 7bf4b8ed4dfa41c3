"""Queries on the `backups` table (see schema.py), taking a Store.

Every row belongs to the Store's host: two hosts sharing one PostgreSQL
inventory may give their jobs one name, and never see each other's attempts.

The remote manifests are the truth about what is restorable; these rows record
what a run was doing (so a killed run can be resumed) and verification results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dedupd.index.store import Store


@dataclass(frozen=True)
class BackupRow:
    id: str
    job: str
    dataset: str
    snapshot: str
    guid: int
    base_guid: int | None
    state: str
    created_snapshot: bool
    chunks: int
    total_size: int
    started: float
    finished: float | None
    verified_at: float | None
    verify_level: str | None
    error: str | None


# BackupRow's fields in order: a row of _SELECT converts field by field.
_COLS = ("id", "job", "dataset", "snapshot", "guid", "base_guid", "state", "created_snapshot",
         "chunks", "total_size", "started", "finished", "verified_at", "verify_level", "error")
_SELECT = f"SELECT {', '.join(_COLS)} FROM backups"


def _row(r: Any) -> BackupRow:
    (id, job, dataset, snapshot, guid, base_guid, state, created, chunks, total, started,
     finished, verified_at, level, error) = r
    return BackupRow(
        id=id, job=job, dataset=dataset, snapshot=snapshot, guid=int(guid),
        base_guid=None if base_guid is None else int(base_guid), state=state,
        created_snapshot=bool(created), chunks=chunks, total_size=total, started=started,
        finished=finished, verified_at=verified_at, verify_level=level, error=error)


def _set(store: Store, id: str, **values: Any) -> None:
    """UPDATE one attempt's row (plain DB-API: a backup run imports no SQLAlchemy)."""
    p = store.db.p
    sets = ", ".join(f"{k} = {p}" for k in values)
    with store.db.tx() as cur:
        cur.execute(f"UPDATE backups SET {sets} WHERE host = {p} AND id = {p}",
                    (*values.values(), store.host, id))


def start(store: Store, *, id: str, job: str, dataset: str, snapshot: str, guid: int,
          base_guid: int | None, created_snapshot: bool) -> None:
    """Record a backup attempt in state 'uploading' before its first chunk goes out."""
    cols = ("host", *_COLS[:11])  # up to `started`; the rest start out NULL
    p = store.db.p
    with store.db.tx() as cur:
        cur.execute(f"INSERT INTO backups ({', '.join(cols)}) "
                    f"VALUES ({', '.join([p] * len(cols))})",
                    (store.host, id, job, dataset, snapshot, str(guid),
                     None if base_guid is None else str(base_guid), "uploading",
                     int(created_snapshot), 0, 0, time.time()))


def finish(store: Store, id: str, state: str, *, chunks: int = 0, total_size: int = 0,
           error: str | None = None) -> None:
    values: dict[str, Any] = {"state": state, "finished": time.time(), "error": error}
    if chunks:
        values.update(chunks=chunks, total_size=total_size)
    _set(store, id, **values)


def set_state(store: Store, id: str, state: str) -> None:
    _set(store, id, state=state)


def mark_verified(store: Store, id: str, level: str, ok: bool) -> None:
    _set(store, id, verified_at=time.time() if ok else None,
         verify_level=level if ok else None, error=None if ok else f"verify {level} failed")


def unfinished(store: Store, job: str) -> BackupRow | None:
    """The newest attempt of this job still in state 'uploading' (a killed run)."""
    p = store.db.p
    rows = store.db.rows(f"{_SELECT} WHERE host = {p} AND job = {p} AND state = 'uploading' "
                         "ORDER BY started DESC LIMIT 1", (store.host, job))
    return _row(rows[0]) if rows else None


def for_job(store: Store, job: str) -> list[BackupRow]:
    p = store.db.p
    return [_row(r) for r in store.db.rows(
        f"{_SELECT} WHERE host = {p} AND job = {p} ORDER BY started", (store.host, job))]


def get(store: Store, id: str) -> BackupRow | None:
    p = store.db.p
    rows = store.db.rows(f"{_SELECT} WHERE host = {p} AND id = {p}", (store.host, id))
    return _row(rows[0]) if rows else None
