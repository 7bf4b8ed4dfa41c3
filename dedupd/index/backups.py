"""Queries on the `backups` table (see schema.py), taking a Store.

The remote manifests are the truth about what is restorable; these rows record
what a run was doing (so a killed run can be resumed) and verification results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update

from dedupd.index import schema as s
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


def _row(r: Any) -> BackupRow:
    return BackupRow(
        id=r.id, job=r.job, dataset=r.dataset, snapshot=r.snapshot, guid=int(r.guid),
        base_guid=None if r.base_guid is None else int(r.base_guid), state=r.state,
        created_snapshot=bool(r.created_snapshot), chunks=r.chunks, total_size=r.total_size,
        started=r.started, finished=r.finished, verified_at=r.verified_at,
        verify_level=r.verify_level, error=r.error)


def start(store: Store, *, id: str, job: str, dataset: str, snapshot: str, guid: int,
          base_guid: int | None, created_snapshot: bool) -> None:
    """Record a backup attempt in state 'uploading' before its first chunk goes out."""
    with store.engine.begin() as c:
        c.execute(s.backups.insert().values(
            id=id, job=job, dataset=dataset, snapshot=snapshot, guid=str(guid),
            base_guid=None if base_guid is None else str(base_guid), state="uploading",
            created_snapshot=int(created_snapshot), chunks=0, total_size=0,
            started=time.time()))


def finish(store: Store, id: str, state: str, *, chunks: int = 0, total_size: int = 0,
           error: str | None = None) -> None:
    values: dict[str, Any] = {"state": state, "finished": time.time(), "error": error}
    if chunks:
        values.update(chunks=chunks, total_size=total_size)
    with store.engine.begin() as c:
        c.execute(update(s.backups).where(s.backups.c.id == id).values(**values))


def set_state(store: Store, id: str, state: str) -> None:
    with store.engine.begin() as c:
        c.execute(update(s.backups).where(s.backups.c.id == id).values(state=state))


def mark_verified(store: Store, id: str, level: str, ok: bool) -> None:
    with store.engine.begin() as c:
        c.execute(update(s.backups).where(s.backups.c.id == id).values(
            verified_at=time.time() if ok else None, verify_level=level if ok else None,
            error=None if ok else f"verify {level} failed"))


def unfinished(store: Store, job: str) -> BackupRow | None:
    """The newest attempt of this job still in state 'uploading' (a killed run)."""
    t = s.backups.c
    q = (select(s.backups).where(t.job == job, t.state == "uploading")
         .order_by(t.started.desc()).limit(1))
    with store.engine.connect() as c:
        r = c.execute(q).first()
    return None if r is None else _row(r)


def for_job(store: Store, job: str) -> list[BackupRow]:
    t = s.backups.c
    with store.engine.connect() as c:
        return [_row(r) for r in c.execute(
            select(s.backups).where(t.job == job).order_by(t.started))]


def get(store: Store, id: str) -> BackupRow | None:
    with store.engine.connect() as c:
        r = c.execute(select(s.backups).where(s.backups.c.id == id)).first()
    return None if r is None else _row(r)
