"""The journal of destructive dedup steps: each state is committed before its step.

One row per operation (replace one name by a hardlink, or move one name across
branches). Its state says which step may have started; recovery
(dedupd/dedup/recovery.py) reads the unfinished rows at start and finishes or
rolls back each one. States (docs/safety.md has the full table):

  PENDING     recorded with every name the op may create (temp, quarantine,
              new link on branch A; the hold name follows from the temp name);
              verification, then those extra names are created, and the name
              is replaced (a hardlink batch has no state between PENDING and
              DONE: recovery reads from the inodes whether a swap happened).
  REFUSED     verification said no; nothing was changed              (final)
  LINKED      crossdrive: the new name on the kept branch exists; verifying
  REMOVING    crossdrive: verified; the duplicate's name is being removed
  DONE        finished                                                (final)
  ROLLED_BACK undone by recovery or after a failed step               (final)
  FAILED      recovery found a state it cannot resolve alone (kept as is) (final)

Rows belong to one host and name filesystems by their ids (keep_fs, dup_fs), not
by st_dev, which changes across reboots: an OpSpec read back carries the device
its filesystem has now, or UNREACHABLE while it is not mounted (no inode check
matches it, so recovery removes nothing on its account).

Test hook (never set in production; dedup/killpoint.py): DEDUPD_TEST_KILL_AT_STEP=k
makes the process SIGKILL itself right after its k-th step (journal write or
filesystem mutation); DEDUPD_TEST_STEP_LOG=FILE appends "n label" per step.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dedupd.dedup.killpoint import StepHook
from dedupd.fsops.link import hold_name
from dedupd.index.db import from_s64, to_s64
from dedupd.index.store import Store

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

    @property
    def hold_path(self) -> bytes | None:
        """Where the duplicate's name is held while it is checked (fsops.link.hold_name
        of temp_path): hardlink, a swap without RENAME_EXCHANGE; crossdrive, the
        duplicate's removal (its temp_path is a name reserved for this, never made)."""
        return None if self.temp_path is None else hold_name(self.temp_path)


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
                "hold": p(sp.hold_path),
                "dest": p(sp.dest_path), "quarantine": p(sp.quarantine_path),
                "size": sp.size, "reason": self.reason, "created": self.created,
                "updated": self.updated}


class Journal:
    """Journal rows in the index database. Every write is committed before returning.

    Durability: the PENDING row, which names every extra name the operation
    may create, is synced to disk (SQLite synchronous=FULL) before any step.
    Later state changes are committed (they survive kill -9) but synced lazily
    (synchronous=NORMAL: the next FULL commit or checkpoint syncs them): after
    a power cut recovery may see an older state, and it is built for that — it
    decides from the inodes on disk, never from the state alone, whether an
    operation is finished.

    Plain DB-API through the index's Db (docs/schema.md, "one query style").
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db
        self.step = StepHook()

    def close(self) -> None:
        """Nothing of its own to release (connections belong to the store)."""

    def _row(self, spec: OpSpec, now: float) -> dict[str, Any]:
        """The row of spec, its devices as filesystem ids (dedupd/index/fsmap.py);
        made before the transaction: a device met first is bound in one of its own."""
        row = _row(spec, now)
        row.update(host=self.store.host, keep_fs=self.store.fs_of(spec.keep_dev, spec.keep_path),
                   dup_fs=self.store.fs_of(spec.dup_dev, spec.dup_path))
        return row

    def _insert(self, cur: Any, row: dict[str, Any]) -> int:
        sql = f"INSERT INTO ops ({', '.join(row)}) VALUES ({self.db.marks(len(row))})"
        if self.db.sqlite is not None:
            cur.execute(sql, list(row.values()))
            return int(cur.lastrowid)
        cur.execute(sql + " RETURNING id", list(row.values()))
        return int(cur.fetchone()[0])

    def _synced(self, cur: Any) -> None:
        if self.db.sqlite is not None:
            cur.execute("PRAGMA synchronous=FULL")  # a PENDING row must survive power loss

    def _lazy(self, cur: Any) -> None:
        if self.db.sqlite is not None:
            cur.execute("PRAGMA synchronous=NORMAL")

    def begin(self, spec: OpSpec) -> int:
        """Record a new operation as PENDING; returns its id."""
        return self._begin([spec])[0]

    def begin_many(self, specs: list[OpSpec]) -> list[int]:
        """Record a batch of operations as PENDING in one synced commit (group commit:
        one flush for the batch instead of one per operation); returns their ids."""
        return self._begin(specs)

    def _begin(self, specs: list[OpSpec]) -> list[int]:
        now = time.time()
        cur = self.db.conn().cursor()
        self._synced(cur)  # outside the transaction: SQLite ignores it inside one
        try:
            rows = [self._row(spec, now) for spec in specs]
            with self.db.tx() as tx:
                ids = [self._insert(tx, row) for row in rows]
        finally:
            self._lazy(cur)
            cur.close()
        self.step(f"journal {PENDING}" if len(specs) == 1 else
                  f"journal {len(specs)} {PENDING}")
        return ids

    def set(self, op_id: int, state: str, reason: str | None = None,
            dirs: tuple[bytes, ...] | None = None) -> None:
        """Move an operation to `state` (committed before this returns)."""
        assert state in STATES
        self._update([(op_id, state, reason, dirs)])
        self.step(f"journal {state}")

    def set_many(self, marks: list[tuple[int, str, str | None]]) -> None:
        """Several final states in one commit (one step for the test hook)."""
        assert all(st in STATES for _, st, _ in marks)
        self._update([(op, st, r, None) for op, st, r in marks])
        self.step(f"journal {len(marks)} states")

    def _update(self, rows: list[tuple[int, str, str | None, tuple[bytes, ...] | None]]
                ) -> None:
        p, now = self.db.p, time.time()
        sql = (f"UPDATE ops SET state = {p}, updated = {p}, reason = COALESCE({p}, reason), "
               f"dirs = COALESCE({p}, dirs) WHERE id = {p}")
        with self.db.tx() as cur:
            cur.executemany(sql, [(st, now, None if r is None else r[:2000],
                                   None if d is None else _dirs_json(d), op)
                                  for op, st, r, d in rows])

    def _select(self, where: str = "", params: tuple[Any, ...] = (),
                tail: str = "") -> list[OpRecord]:
        mine = f"host = {self.db.p}"
        where = f"{where} AND {mine}" if where else f"WHERE {mine}"
        sql = f"SELECT {', '.join(_COLUMNS)} FROM ops {where} {tail}"
        return [_record(r, self._dev) for r in self.db.rows(sql, (*params, self.store.host))]

    def _dev(self, fs: int, path: bytes) -> int:
        """The current st_dev of a filesystem id; UNREACHABLE when it is not mounted
        now (then no inode check can match and recovery changes nothing)."""
        dev = self.store.dev_of(fs, os.path.dirname(path) or b"/")
        return UNREACHABLE if dev is None else dev

    def get(self, op_id: int) -> OpRecord | None:
        got = self._select(f"WHERE id = {self.db.p}", (op_id,))
        return got[0] if got else None

    def unfinished(self, volume: str | None = None) -> list[OpRecord]:
        where = f"WHERE state NOT IN ({self.db.marks(len(FINAL))})"
        params: tuple[Any, ...] = FINAL
        if volume is not None:
            where += f" AND volume = {self.db.p}"
            params += (volume,)
        return self._select(where, params, "ORDER BY id")

    def history(self, volume: str | None = None, limit: int = 100,
                states: tuple[str, ...] = ()) -> list[OpRecord]:
        """The newest `limit` operations, oldest first."""
        conds, params = [], []
        if volume is not None:
            conds.append(f"volume = {self.db.p}")
            params.append(volume)
        if states:
            conds.append(f"state IN ({self.db.marks(len(states))})")
            params += states
        where = ("WHERE " + " AND ".join(conds)) if conds else ""
        rows = self._select(where, tuple(params), f"ORDER BY id DESC LIMIT {int(limit)}")
        return rows[::-1]


# A device number no file has: what an op's filesystem maps to while it is not mounted.
UNREACHABLE = -1
_COLUMNS = ("id", "state", "volume", "kind", "keep_path", "dup_path", "keep_fs", "keep_ino",
            "dup_fs", "dup_ino", "size", "dup_mtime_ns", "temp_path", "dest_path",
            "quarantine_path", "dirs", "reason", "created", "updated")


def _row(spec: OpSpec, now: float) -> dict[str, Any]:
    return {"volume": spec.volume, "kind": spec.kind, "state": PENDING,
            "keep_path": spec.keep_path, "dup_path": spec.dup_path,
            "temp_path": spec.temp_path, "dest_path": spec.dest_path,
            "quarantine_path": spec.quarantine_path,
            "keep_ino": to_s64(spec.keep_ino), "dup_ino": to_s64(spec.dup_ino),
            "size": spec.size, "dup_mtime_ns": spec.dup_mtime_ns,
            "dirs": _dirs_json(spec.dirs), "created": now, "updated": now}


def _dirs_json(dirs: tuple[bytes, ...]) -> str:
    return json.dumps([os.fsdecode(d) for d in dirs])


def _record(r: Any, dev: Callable[[int, bytes], int]) -> OpRecord:
    m = dict(zip(_COLUMNS, r, strict=True))
    dirs = tuple(os.fsencode(d) for d in json.loads(m["dirs"] or "[]"))
    keep, dup = bytes(m["keep_path"]), bytes(m["dup_path"])
    spec = OpSpec(m["volume"], m["kind"], keep, dup,
                  dev(m["keep_fs"], keep), from_s64(m["keep_ino"]), dev(m["dup_fs"], dup),
                  from_s64(m["dup_ino"]), m["size"], m["dup_mtime_ns"],
                  _b(m["temp_path"]), _b(m["dest_path"]), _b(m["quarantine_path"]), dirs)
    return OpRecord(m["id"], m["state"], spec, m["reason"], m["created"], m["updated"])


def _b(v: Any) -> bytes | None:
    return None if v is None else bytes(v)
