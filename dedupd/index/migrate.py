"""Opening an index: create, refuse a newer one, or upgrade an older one in place.

Version 5 adds a host to each backup attempt (`backups.host`); the rows an
older index holds become the upgrading host's (the table did not say whose they
were: on a PostgreSQL inventory shared before, open it first from the host that
runs those backup jobs).

Version 4 has version 3's tables; a file of up to HEADLESS_MAX bytes whose full
hash is known keeps no head hash (dedupd/index/bulk.py): the upgrade from 3 drops
those heads and keeps every full hash.

Version 3 keys files by filesystem identity instead of st_dev and stores paths
once per directory (docs/schema.md). The upgrade from 2 keeps every row and every
hash, in one transaction (a failure leaves version 2 as it was):

- each st_dev of the old rows is identified through one of its indexed paths that
  still names the recorded inode (same ino), so a device number that moved since
  the old dedupd ran is not trusted blindly;
- a device none of whose paths can be checked now (unmounted, renamed) keeps its
  rows under a provisional filesystem "provisional:<old st_dev>": the first pass
  that identifies a filesystem holding one of its directories claims it
  (dedupd/index/fsmap.py), so nothing is lost and nothing is read again;
- every row becomes this host's (a version 2 index belonged to one machine).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from dedupd import handles
from dedupd.files.fsid import FsIdentity, FsIdentityError, HostIdentity, Identities
from dedupd.index.bulk import HEADLESS_MAX
from dedupd.index.db import SCHEMA_VERSION, Db, IndexError_, from_s64, run_schema
from dedupd.index.dirs import DirTree, split
from dedupd.index.fsmap import PROVISIONAL, register_host

OLD_TABLES = ("meta", "scans", "inodes", "paths", "provenance", "ops", "extent_done",
              "extent_refs")
OLD_INDEXES = ("ix_inodes_size", "ix_paths_inode", "ix_provenance_archive",
               "ix_provenance_source", "ix_provenance_content", "ix_ops_state",
               "ix_inodes_seen_size", "ix_paths_seen")
PAGE = 2000


def put_meta(db: Db, cur: Any, host: int, key: str, value: str) -> None:
    p = db.p
    cur.execute(f'INSERT INTO meta (host, "key", value) VALUES ({p}, {p}, {p}) '
                'ON CONFLICT (host, "key") DO UPDATE SET value = excluded.value',
                (host, key, value))


def schema_version(db: Db) -> str | None:
    """The stored schema version; None for an empty database."""
    if "meta" in db.missing_tables():
        return None
    rows = db.rows("SELECT value FROM meta WHERE \"key\" = 'schema_version'")
    return str(rows[0][0]) if rows else None


def open_index(db: Db, host: HostIdentity) -> int:
    """Make db an index of SCHEMA_VERSION; returns the host's id. Raises IndexError_
    for an index of a newer dedupd and HostClash for a host name another machine
    holds, in both cases before writing anything. One process at a time does it
    (_one_at_a_time), so the second of two started together finds the first's."""
    with _one_at_a_time(db):
        return _open(db, host)


# PostgreSQL advisory lock key of open_index ("dedupd" in ASCII)
_OPEN_LOCK = 0x646564757064


@contextmanager
def _one_at_a_time(db: Db) -> Iterator[None]:
    """On PostgreSQL, a session advisory lock around opening the index: there CREATE
    TABLE IF NOT EXISTS is not safe against a concurrent one (both see no table and
    the second fails on the catalog's unique index), nor is an upgrade. SQLite's
    write transactions (BEGIN IMMEDIATE) are one at a time already, and an upgrade
    reads the version again inside its own (_open)."""
    if db.dialect != "postgresql":
        yield
        return
    db.run(f"SELECT pg_advisory_lock({_OPEN_LOCK})")
    try:
        yield
    finally:
        with suppress(Exception):  # a broken connection: the session's end frees it
            db.run(f"SELECT pg_advisory_unlock({_OPEN_LOCK})")


def _open(db: Db, host: HostIdentity) -> int:
    found = schema_version(db)
    if found is not None and (not found.isdigit() or int(found) > SCHEMA_VERSION):
        raise IndexError_(f"index {db.url} has schema version {found}; this dedupd "
                          f"knows up to {SCHEMA_VERSION} (upgrade dedupd, or use "
                          "another --db)")
    if found is not None and int(found) < SCHEMA_VERSION:
        old = int(found)
        # 3 and later have hosts: a clash is refused before the upgrade writes anything
        hid = register_host(db, host) if old >= 3 else None
        with db.tx() as cur:  # one transaction: a failure leaves the old version as it was
            # read again under the write lock (SQLite: BEGIN IMMEDIATE): another process
            # that read the same old version may have upgraded it since (upgrading it
            # again failed: "duplicate column name: host")
            cur.execute("SELECT value FROM meta WHERE \"key\" = 'schema_version'")
            if str(cur.fetchone()[0]) == found:
                _upgrade(db, cur, host, hid)
    elif found is None or db.missing_tables():
        with db.tx() as cur:
            _create(db, cur)
            put_meta(db, cur, 0, "schema_version", str(SCHEMA_VERSION))
    return register_host(db, host)


def _upgrade(db: Db, cur: Any, host: HostIdentity, hid: int | None) -> None:
    """An index of an older version to SCHEMA_VERSION, in the caller's transaction.
    hid: the host's id (None for version 2, which has no hosts: made here)."""
    backups = "backups" not in db.missing_tables()
    if backups:
        _backups_host_column(cur)
    if hid is None:
        hid = _upgrade_v2(db, cur, host)
    _create(db, cur)  # tables and indexes new since (IF NOT EXISTS)
    if backups:
        cur.execute(f"UPDATE backups SET host = {db.p} WHERE host = 0", (hid,))
    _drop_small_heads(cur)
    put_meta(db, cur, 0, "schema_version", str(SCHEMA_VERSION))


def _create(db: Db, cur: Any) -> None:
    run_schema(cur, db.dialect)


def _backups_host_column(cur: Any) -> None:
    """-> 5: backup attempts belong to a host (two hosts may name their jobs alike).
    The rows there were are the upgrading host's: an index without hosts in the
    backups table cannot say whose they were (module docstring)."""
    cur.execute("DROP INDEX IF EXISTS ix_backups_job_state")
    cur.execute("ALTER TABLE backups ADD COLUMN host INTEGER DEFAULT '0' NOT NULL")


def _drop_small_heads(cur: Any) -> None:
    """3 -> 4: the head hash of a small file whose full hash is known is never used."""
    cur.execute(f'UPDATE inodes SET head = NULL WHERE head IS NOT NULL AND "full" IS NOT NULL '
                f"AND size <= {HEADLESS_MAX}")


def _rows(db: Db, sql: str, params: tuple[Any, ...] = ()) -> Iterator[Any]:
    """A whole old table, page by page, on a cursor of its own."""
    c = db.conn().cursor()
    try:
        c.execute(sql, params)
        while page := c.fetchmany(PAGE):
            yield from page
    finally:
        c.close()


def _upgrade_v2(db: Db, cur: Any, host: HostIdentity) -> int:
    for ix in OLD_INDEXES:
        cur.execute(f"DROP INDEX IF EXISTS {ix}")
    for t in OLD_TABLES:
        cur.execute(f"ALTER TABLE {t} RENAME TO {t}_v2")
    _create(db, cur)
    p = db.p
    cur.execute(f"INSERT INTO hosts (name, machine_id) VALUES ({p}, {p}) RETURNING id",
                (host.name, host.machine_id))
    hid = int(cur.fetchone()[0])
    for key, value in list(_rows(db, 'SELECT "key", value FROM meta_v2')):
        put_meta(db, cur, 0 if key == "schema_version" else hid, key, value)
    cur.execute(f"INSERT INTO scans (id, host, started, finished, roots) SELECT id, {p}, "
                "started, finished, roots FROM scans_v2", (hid,))
    fs = _Devices(db, cur, hid)
    _copy_files(db, cur, hid, fs)
    _copy_rest(db, cur, hid, fs)
    for t in OLD_TABLES:
        cur.execute(f"DROP TABLE {t}_v2")
    return hid


class _Devices:
    """Old st_dev -> new filesystem id, identified through paths that still hold
    the recorded inode, else provisional (see the module docstring)."""

    def __init__(self, db: Db, cur: Any, host: int) -> None:
        self.db, self.cur, self.host = db, cur, host
        self.ids = Identities()
        self.map: dict[int, int] = {}

    def __call__(self, dev: int, samples: list[tuple[bytes, int]] | None = None) -> int:
        if dev in self.map:
            return self.map[dev]
        if samples is None:
            samples = [(bytes(a), int(b)) for a, b in self.db.rows(
                f"SELECT path, ino FROM paths_v2 WHERE dev = {self.db.p} LIMIT 5", (dev,))]
        ident = next(filter(None, (self._identify(path, ino) for path, ino in samples)), None)
        if ident is None:
            ident = FsIdentity(f"{PROVISIONAL}{dev}", "unknown", b"", False)
        p = self.db.p
        self.cur.execute(f"INSERT INTO filesystems (host, ident, fstype, mountpoint, stable) "
                         f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (host, ident) "
                         "DO NOTHING", (self.host, ident.ident, ident.fstype,
                                        ident.mountpoint, int(ident.stable)))
        self.cur.execute(f"SELECT id FROM filesystems WHERE host = {p} AND ident = {p}",
                         (self.host, ident.ident))
        self.map[dev] = int(self.cur.fetchone()[0])
        return self.map[dev]

    def _identify(self, path: bytes, ino: int) -> FsIdentity | None:
        try:
            if handles.lstat(path).st_ino != from_s64(ino):
                return None
            fd = handles.open_dir(split(path)[0])
        except OSError:
            return None
        try:
            return self.ids.of(os.fstat(fd).st_dev, fd)
        except FsIdentityError:
            return None
        finally:
            os.close(fd)


def _copy_files(db: Db, cur: Any, hid: int, fs: _Devices) -> None:
    m = db.marks
    for dev, in list(_rows(db, "SELECT DISTINCT dev FROM inodes_v2")):
        fs(dev)
    batch: list[Any] = []
    for r in _rows(db, 'SELECT dev, ino, size, mtime_ns, ctime_ns - mtime_ns, head, "full", '
                   "seen, unstable FROM inodes_v2"):
        batch.append((fs(r[0]), *r[1:]))
        if len(batch) >= PAGE:
            _insert(cur, f'INSERT INTO inodes (fs, ino, size, mtime_ns, ctime_delta, head, "full", '
                    f"seen, unstable) VALUES ({m(9)}) ON CONFLICT (fs, ino) DO NOTHING", batch)
    _insert(cur, f'INSERT INTO inodes (fs, ino, size, mtime_ns, ctime_delta, head, "full", '
            f"seen, unstable) VALUES ({m(9)}) ON CONFLICT (fs, ino) DO NOTHING", batch)
    tree = DirTree(db, hid)
    for path, dev, ino, seen in _rows(db, "SELECT path, dev, ino, seen FROM paths_v2"):
        d, name = split(bytes(path))
        batch.append((tree.ensure(cur, d, fs(dev)), name, ino, seen))
        if len(batch) >= PAGE:
            _insert(cur, f"INSERT INTO entries (dir, name, ino, seen) VALUES ({m(4)}) "
                    "ON CONFLICT (dir, name) DO NOTHING", batch)
    _insert(cur, f"INSERT INTO entries (dir, name, ino, seen) VALUES ({m(4)}) "
            "ON CONFLICT (dir, name) DO NOTHING", batch)


def _insert(cur: Any, sql: str, batch: list[Any]) -> None:
    if batch:
        cur.executemany(sql, batch)
        batch.clear()


def _copy_rest(db: Db, cur: Any, hid: int, fs: _Devices) -> None:
    """provenance, ops and extent state, with devices mapped as the files' were."""
    m = db.marks
    rows = [(hid, *r[:7], fs(r[7], [(bytes(r[2]), r[8])]), *r[8:]) for r in _rows(
        db, "SELECT consolidation, source_key, source_path, archive_key, archive_path, "
        "content, size, src_dev, src_ino, src_mtime_ns, src_ctime_ns, first_seen, last_seen "
        "FROM provenance_v2")]
    _insert(cur, "INSERT INTO provenance (host, consolidation, source_key, source_path, "
            "archive_key, archive_path, content, size, src_fs, src_ino, src_mtime_ns, "
            f"src_ctime_ns, first_seen, last_seen) VALUES ({m(14)})", rows)
    cols = ("id, volume, kind, state, keep_path, dup_path, temp_path, dest_path, "
            "quarantine_path, {k}, keep_ino, {d}, dup_ino, size, dup_mtime_ns, dirs, reason, "
            "created, updated")
    rows = [(hid, *r[:9], fs(r[9], [(bytes(r[4]), r[10])]), r[10],
             fs(r[11], [(bytes(r[5]), r[12])]), *r[12:])
            for r in _rows(db, "SELECT " + cols.format(k="keep_dev", d="dup_dev") +
                           " FROM ops_v2")]
    _insert(cur, "INSERT INTO ops (host, " + cols.format(k="keep_fs", d="dup_fs") +
            f") VALUES ({m(20)})", rows)
    rows = [(fs(r[0]), r[1], r[2], fs(r[3]), *r[4:]) for r in _rows(
        db, 'SELECT dev, ino, "full", ref_dev, ref_ino, bytes, at FROM extent_done_v2')]
    _insert(cur, 'INSERT INTO extent_done (fs, ino, "full", ref_fs, ref_ino, bytes, at) '
            f"VALUES ({m(7)}) ON CONFLICT (fs, ino) DO NOTHING", rows)
    rows = [(hid, r[0], r[1], fs(r[2]), r[3]) for r in _rows(
        db, 'SELECT size, "full", dev, ino FROM extent_refs_v2')]
    _insert(cur, f'INSERT INTO extent_refs (host, size, "full", fs, ino) VALUES ({m(5)})', rows)
