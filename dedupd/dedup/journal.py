"""The journal of destructive dedup steps: each state is committed before its step.

One row per operation (replace one name by a hardlink, or move one name across
branches). Its state says which step may have started; recovery
(dedupd/dedup/recovery.py) reads the unfinished rows at start and finishes or
rolls back each one. States (docs/safety.md has the full table):

  PENDING     recorded with every name the op may create (temp, quarantine,
              new link on branch A); verification, then those extra names
              are created. Nothing user-visible changed yet.
  REFUSED     verification said no; nothing was changed              (final)
  LINKED      crossdrive: the new name on the kept branch exists; verifying
  REMOVING    crossdrive: verified; the duplicate's name is being removed
  DONE        finished                                                (final)
  ROLLED_BACK undone by recovery or after a failed step               (final)
  FAILED      recovery found a state it cannot resolve alone (kept as is) (final)

Test hook (never set in production; dedup/killpoint.py): DEDUPD_TEST_KILL_AT_STEP=k
makes the process SIGKILL itself right after its k-th step (journal write or
filesystem mutation); DEDUPD_TEST_STEP_LOG=FILE appends "n label" per step.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, event, func, select, update

from dedupd.dedup.killpoint import StepHook
from dedupd.index import schema as s
from dedupd.index.schema import from_s64, to_s64
from dedupd.index.store import Store, make_engine

PENDING, REFUSED = "PENDING", "REFUSED"
LINKED, REMOVING = "LINKED", "REMOVING"
DONE, ROLLED_BACK, FAILED = "DONE", "ROLLED_BACK", "FAILED"
FINAL = (REFUSED, DONE, ROLLED_BACK, FAILED)
STATES = (PENDING, REFUSED, LINKED, REMOVING, DONE, ROLLED_BACK, FAILED)


@dataclass(frozen=True)
class OpSpec:
    """What an operation will do, recorded with state PENDING."""

    volume: str
    kind: str  # hardlink | crossdrive
    keep_path: bytes
    dup_path: bytes
    keep_dev: int
    keep_ino: int
    dup_dev: int
    dup_ino: int
    size: int
    dup_mtime_ns: int
    temp_path: bytes | None = None
    dest_path: bytes | None = None
    quarantine_path: bytes | None = None
    dirs: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class OpRecord:
    id: int
    state: str
    spec: OpSpec
    reason: str | None
    created: float
    updated: float

    def as_json(self) -> dict[str, Any]:
        sp = self.spec

        def p(b: bytes | None) -> str | None:
            return None if b is None else os.fsdecode(b)

        return {"id": self.id, "volume": sp.volume, "kind": sp.kind, "state": self.state,
                "keep": p(sp.keep_path), "replace": p(sp.dup_path), "temp": p(sp.temp_path),
                "dest": p(sp.dest_path), "quarantine": p(sp.quarantine_path),
                "size": sp.size, "reason": self.reason, "created": self.created,
                "updated": self.updated}


def _full_sync(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA synchronous=FULL")  # a journal row must survive power loss
    cur.close()


class Journal:
    """Journal rows in the index database. Every write is committed before returning.

    Durability: the PENDING row, which names every extra name the operation
    may create, is synced to disk (SQLite synchronous=FULL) before any step.
    Later state changes are committed (they survive kill -9) but synced lazily
    (synchronous=NORMAL: the next FULL commit or checkpoint syncs them): after
    a power cut recovery may see an older state, and it is built for that — it
    decides from the inodes on disk, never from the state alone, whether an
    operation is finished.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine: Engine = store.engine  # NORMAL: state changes
        self.synced: Engine = store.engine  # FULL: new operations
        if store.dialect == "sqlite" and ":memory:" not in store.url:
            self.synced = make_engine(store.url)
            event.listen(self.synced, "connect", _full_sync)
        self.step = StepHook()

    def close(self) -> None:
        if self.synced is not self.store.engine:
            self.synced.dispose()

    def begin(self, spec: OpSpec) -> int:
        """Record a new operation as PENDING; returns its id."""
        with self.synced.begin() as c:
            pk = c.execute(_INSERT, _row(spec, time.time())).inserted_primary_key
        assert pk is not None
        self.step(f"journal {PENDING}")
        return int(pk[0])

    def begin_many(self, specs: list[OpSpec]) -> list[int]:
        """Record a batch of operations as PENDING in one synced commit (group commit:
        one flush for the batch instead of one per operation); returns their ids."""
        now = time.time()
        ids = []
        with self.synced.begin() as c:
            for spec in specs:
                pk = c.execute(_INSERT, _row(spec, now)).inserted_primary_key
                assert pk is not None
                ids.append(int(pk[0]))
        self.step(f"journal {len(specs)} {PENDING}")
        return ids

    def set(self, op_id: int, state: str, reason: str | None = None,
            dirs: tuple[bytes, ...] | None = None) -> None:
        """Move an operation to `state` (committed before this returns)."""
        assert state in STATES
        vals: dict[str, Any] = {"oid": op_id, "st": state, "up": time.time()}
        stmt = _SET_STATE
        if reason is not None or dirs is not None:
            stmt = _SET_DETAIL
            vals["rs"] = None if reason is None else reason[:2000]
            vals["ds"] = None if dirs is None else _dirs_json(dirs)
        with self.engine.begin() as c:
            c.execute(stmt, vals)
        self.step(f"journal {state}")

    def set_many(self, marks: list[tuple[int, str, str | None]]) -> None:
        """Several final states in one commit (one step for the test hook)."""
        now = time.time()
        rows = [{"oid": op, "st": st, "up": now, "rs": None if r is None else r[:2000],
                 "ds": None} for op, st, r in marks]
        assert all(st in STATES for _, st, _ in marks)
        with self.engine.begin() as c:
            c.execute(_SET_DETAIL, rows)
        self.step(f"journal {len(marks)} states")

    def get(self, op_id: int) -> OpRecord | None:
        with self.engine.connect() as c:
            r = c.execute(select(s.ops).where(s.ops.c.id == op_id)).first()
        return None if r is None else _record(r)

    def unfinished(self, volume: str | None = None) -> list[OpRecord]:
        q = select(s.ops).where(s.ops.c.state.not_in(FINAL)).order_by(s.ops.c.id)
        if volume is not None:
            q = q.where(s.ops.c.volume == volume)
        with self.engine.connect() as c:
            return [_record(r) for r in c.execute(q)]

    def history(self, volume: str | None = None, limit: int = 100,
                states: tuple[str, ...] = ()) -> list[OpRecord]:
        """The newest `limit` operations, oldest first."""
        q = select(s.ops).order_by(s.ops.c.id.desc()).limit(limit)
        if volume is not None:
            q = q.where(s.ops.c.volume == volume)
        if states:
            q = q.where(s.ops.c.state.in_(states))
        with self.engine.connect() as c:
            rows = [_record(r) for r in c.execute(q)]
        return rows[::-1]


# Built once: statement construction is most of a small write's cost.
_INSERT = s.ops.insert()
_SET_STATE = update(s.ops).where(s.ops.c.id == bindparam("oid")).values(
    state=bindparam("st"), updated=bindparam("up"))
_SET_DETAIL = update(s.ops).where(s.ops.c.id == bindparam("oid")).values(
    state=bindparam("st"), updated=bindparam("up"),
    reason=func.coalesce(bindparam("rs"), s.ops.c.reason),
    dirs=func.coalesce(bindparam("ds"), s.ops.c.dirs))


def _row(spec: OpSpec, now: float) -> dict[str, Any]:
    return {"volume": spec.volume, "kind": spec.kind, "state": PENDING,
            "keep_path": spec.keep_path, "dup_path": spec.dup_path,
            "temp_path": spec.temp_path, "dest_path": spec.dest_path,
            "quarantine_path": spec.quarantine_path,
            "keep_dev": to_s64(spec.keep_dev), "keep_ino": to_s64(spec.keep_ino),
            "dup_dev": to_s64(spec.dup_dev), "dup_ino": to_s64(spec.dup_ino),
            "size": spec.size, "dup_mtime_ns": spec.dup_mtime_ns,
            "dirs": _dirs_json(spec.dirs), "created": now, "updated": now}


def _dirs_json(dirs: tuple[bytes, ...]) -> str:
    return json.dumps([os.fsdecode(d) for d in dirs])


def _record(r: Any) -> OpRecord:
    m = r._mapping
    dirs = tuple(os.fsencode(d) for d in json.loads(m["dirs"] or "[]"))
    spec = OpSpec(m["volume"], m["kind"], bytes(m["keep_path"]), bytes(m["dup_path"]),
                  from_s64(m["keep_dev"]), from_s64(m["keep_ino"]), from_s64(m["dup_dev"]),
                  from_s64(m["dup_ino"]), m["size"], m["dup_mtime_ns"],
                  _b(m["temp_path"]), _b(m["dest_path"]), _b(m["quarantine_path"]), dirs)
    return OpRecord(m["id"], m["state"], spec, m["reason"], m["created"], m["updated"])


def _b(v: Any) -> bytes | None:
    return None if v is None else bytes(v)
