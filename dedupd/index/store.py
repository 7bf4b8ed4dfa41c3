"""Store: every query the index answers, behind one class.

Blocking (sync SQLAlchemy): the daemon calls it from worker threads. Stages get
frozen dataclasses back, never rows. Work is done in batches so memory stays
bounded whatever the number of indexed files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dedupd.errors import TemporaryFailure
from dedupd.files.events import FileEvent, Ident
from dedupd.index.bulk import Bulk
from dedupd.index.db import (
    SCHEMA_VERSION,
    Db,
    IndexError_,
    from_s64,
    index_failure,
    is_psycopg_error,
    sqlite_pragmas,
    to_s64,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["IndexError_", "Store", "IndexedFile", "HashUpdate", "RecordResult", "path_key",
           "make_engine"]

# Statements that take an index from version N to N + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: the `seen` indexes cost every rescan an index update per file
    # and served only queries that read the whole scan anyway.
    1: ("DROP INDEX IF EXISTS ix_inodes_seen_size", "DROP INDEX IF EXISTS ix_paths_seen"),
}
BATCH = 1000  # keys per IN (...) query; well under SQLite's variable limit


@dataclass(frozen=True, slots=True)
class IndexedFile:
    """An inode as the index knows it, with the paths seen in the current scan."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    head: int | None
    full: bytes | None
    unstable: int
    paths: tuple[bytes, ...]

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    @property
    def path(self) -> bytes:
        return self.paths[0]


@dataclass(frozen=True, slots=True)
class HashUpdate:
    dev: int
    ino: int
    head: int | None
    full: bytes | None
    # (size, mtime_ns, ctime_ns) the hashes were read at: when given, a row that
    # moved on meanwhile (re-recorded as changed) is left alone
    stat: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class RecordResult:
    new: int
    changed: int
    unchanged: int
    files: tuple[IndexedFile, ...] = ()  # the batch's inodes, hashes kept when unchanged


def path_key(path: bytes) -> bytes:
    return hashlib.blake2b(path, digest_size=16).digest()


def engine_url(url: str) -> str:
    """psycopg 3 is the PostgreSQL driver we ship; a bare postgresql:// means it."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine on the index, for the modules written with its Core."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.exc import SQLAlchemyError

    Db(url)  # the same checks (and index directory) as Store's own connection
    url = engine_url(url)
    try:
        engine = create_engine(url, future=True)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise IndexError_(f"cannot use database URL {url!r}: {e}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", lambda c, _record: sqlite_pragmas(c))
        event.listen(engine, "handle_error", _index_failure_of(url))
    return engine


def _index_failure_of(url: str) -> Callable[[Any], None]:
    """SQLAlchemy hook: a read-only or full index is a one-line error, as in Db."""
    def hook(ctx: Any) -> None:
        fail = index_failure(url, ctx.original_exception)
        if fail is not None:
            raise fail from None

    return hook


class Store:
    """The index. Thread-safe: each thread gets its own connection (see db.py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.db = Db(url)
        self.dialect = self.db.dialect
        self.bulk = Bulk(self.db)
        self._engine: Engine | None = None
        try:
            if self.db.missing_tables():
                self._create_tables()
            self._upgrade()
        except sqlite3.OperationalError as e:
            raise index_failure(url, e) or TemporaryFailure(
                f"index {url}: cannot open: {e}") from None
        except sqlite3.Error as e:
            raise IndexError_(f"index {url}: {e}") from None
        except Exception as e:
            if is_psycopg_error(e):
                raise IndexError_(f"index {url}: {e}") from None
            raise

    def _create_tables(self) -> None:
        from dedupd.index.ddl import SCHEMA_DDL

        with self.db.tx() as cur:
            for stmt in SCHEMA_DDL[self.dialect]:
                cur.execute(stmt)

    @property
    def engine(self) -> Engine:
        """SQLAlchemy engine on the same database, made (and imported) on first use."""
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def close(self) -> None:
        self.db.close()
        if self._engine is not None:
            self._engine.dispose()

    def insert(self, table: Any) -> Any:
        """A SQLAlchemy INSERT of table in this index's dialect (with on_conflict_*)."""
        # imported here: loading the PostgreSQL dialect costs ~0.1 s of every start
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    # --- meta: small key/value state (per-volume generations, timestamps) ---

    def get_meta(self, key: str) -> str | None:
        rows = self.db.rows(f"SELECT value FROM meta WHERE key = {self.db.p}", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db.tx() as cur:
            self._put_meta(cur, key, value)

    def _put_meta(self, cur: Any, key: str, value: str) -> None:
        p = self.db.p
        cur.execute(f"INSERT INTO meta (key, value) VALUES ({p}, {p}) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def _upgrade(self) -> None:
        """Bring an index written by an older dedupd to SCHEMA_VERSION."""
        found = self.get_meta("schema_version")
        if found == str(SCHEMA_VERSION):
            return
        if found is not None and (not found.isdigit() or int(found) > SCHEMA_VERSION):
            raise IndexError_(f"index {self.url} has schema version {found}; this dedupd "
                              f"knows up to {SCHEMA_VERSION} (upgrade dedupd, or use "
                              "another --db)")
        with self.db.tx() as cur:
            for version in range(int(found or SCHEMA_VERSION), SCHEMA_VERSION):
                for stmt in MIGRATIONS.get(version, ()):
                    cur.execute(stmt)
            self._put_meta(cur, "schema_version", str(SCHEMA_VERSION))

    # --- scans ---

    def begin_scan(self, roots: Sequence[bytes]) -> int:
        doc = json.dumps([os.fsdecode(r) for r in roots])
        p = self.db.p
        with self.db.tx() as cur:
            cur.execute(f"INSERT INTO scans (started, roots) VALUES ({p}, {p}) RETURNING id",
                        (time.time(), doc))
            return int(cur.fetchone()[0])

    def record(self, scan_id: int, events: Sequence[FileEvent],
               touch_inodes: bool = True) -> RecordResult:
        """Upsert one batch of walk results; unchanged inodes keep their hashes.

        An inode is unchanged when size, mtime_ns and ctime_ns all match (ctime
        catches writes that preserved mtime). Idempotent for a given scan_id.
        The result lists the batch's inodes as the index now has them.
        touch_inodes=False leaves unchanged inodes' `seen` alone (the caller
        finds its groups without the index, or calls mark_inodes_seen later).
        """
        by_key: dict[tuple[int, int], FileEvent] = {}
        names: dict[tuple[int, int], list[bytes]] = defaultdict(list)
        for e in events:
            k = (to_s64(e.dev), to_s64(e.ino))
            by_key[k] = e
            names[k].append(e.path)
        pkeys = {path_key(e.path): e for e in events}
        now = time.time()
        new = changed = 0
        upserts: list[tuple[Any, ...]] = []
        touched: dict[int, list[int]] = defaultdict(list)
        files: list[IndexedFile] = []
        with self.db.tx() as c:
            # One lookup answers the common (rescan) case: the path is known, still
            # names the same inode, and that inode's stat is on the same row.
            known: dict[bytes, tuple[int, int]] = {}
            old: dict[tuple[int, int], tuple[Any, ...]] = {}
            for r in self.bulk.path_rows(c, list(pkeys)):
                known[r[0]] = (r[1], r[2])
                if r[3] is not None:
                    old[(r[1], r[2])] = tuple(r[3:])
            missing: dict[int, list[int]] = defaultdict(list)
            for d, n in by_key:
                if (d, n) not in old:
                    missing[d].append(n)
            for d, inos in missing.items():  # new names, hardlinks seen for the first time
                for r in self.bulk.stat_rows(c, d, inos):
                    old[(d, r[0])] = tuple(r[1:])
            for k, e in by_key.items():
                o = old.get(k)  # (size, mtime_ns, ctime_ns, unstable, head, full)
                paths = tuple(sorted(names[k]))
                if o is not None and o[:3] == (e.size, e.mtime_ns, e.ctime_ns):
                    touched[k[0]].append(k[1])
                    head = None if o[4] is None else from_s64(o[4])
                    files.append(IndexedFile(e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns,
                                             head, o[5], o[3], paths))
                    continue
                new, changed = (new + 1, changed) if o is None else (new, changed + 1)
                unstable = 0 if o is None else o[3] + 1
                upserts.append(_inode_row(k, e, scan_id, now, unstable))
                files.append(IndexedFile(e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns,
                                         None, None, unstable, paths))
            same, prow = [], []
            for pk, e in pkeys.items():
                if known.get(pk) == (to_s64(e.dev), to_s64(e.ino)):
                    same.append(pk)
                else:
                    prow.append((pk, e.path, to_s64(e.dev), to_s64(e.ino), scan_id))
            if upserts:
                self.bulk.upsert_inodes(c, upserts)
            for d, inos in touched.items() if touch_inodes else ():
                self.bulk.touch_inodes(c, scan_id, d, inos)
            if same:
                self.bulk.touch_paths(c, scan_id, same)
            if prow:
                self.bulk.upsert_paths(c, prow)
        return RecordResult(new, changed, sum(len(v) for v in touched.values()), tuple(files))

    def finish_scan(self, scan_id: int, roots: Sequence[bytes]) -> int:
        """Forget paths under `roots` that this scan did not see; drop orphan inodes.

        Returns the number of paths forgotten. Paths outside the roots are untouched.
        """
        prefixes = [r.rstrip(b"/") + b"/" for r in roots]
        gone: list[bytes] = []
        for key, path in self.db.rows(f"SELECT path_key, path FROM paths "
                                      f"WHERE seen < {self.db.p}", (scan_id,)):
            path = bytes(path)
            if any(path.startswith(x) or path + b"/" == x for x in prefixes):
                gone.append(bytes(key))
        p = self.db.p
        with self.db.tx() as cur:
            for part in chunks(gone, BATCH):
                cur.execute(f"DELETE FROM paths WHERE path_key IN ({self.db.marks(len(part))})",
                            part)
            self.drop_orphans(cur)
            cur.execute(f"UPDATE scans SET finished = {p} WHERE id = {p}", (time.time(), scan_id))
        return len(gone)

    def mark_inodes_seen(self, scan_id: int) -> None:
        """Set `seen` on every inode with a path seen in this scan (after record(...,
        touch_inodes=False)), so that the size-group queries find them."""
        p = self.db.p
        with self.db.tx() as cur:
            cur.execute(f"UPDATE inodes SET seen = {p} WHERE seen <> {p} AND EXISTS (SELECT 1 "
                        "FROM paths p WHERE p.dev = inodes.dev AND p.ino = inodes.ino "
                        f"AND p.seen = {p})", (scan_id, scan_id, scan_id))

    def drop_orphans(self, cur: Any) -> None:
        """Delete inode rows no path names any more (in the caller's transaction)."""
        cur.execute("DELETE FROM inodes WHERE NOT EXISTS (SELECT 1 FROM paths p "
                    "WHERE p.dev = inodes.dev AND p.ino = inodes.ino)")

    def forget(self, keys: Iterable[tuple[int, int]]) -> None:
        """Remove inodes (and their paths) that turned out to be gone."""
        ks = [(to_s64(d), to_s64(n)) for d, n in keys]
        p = self.db.p
        with self.db.tx() as cur:
            for table in ("paths", "inodes"):
                cur.executemany(f"DELETE FROM {table} WHERE dev = {p} AND ino = {p}", ks)

    # --- candidates and hashes ---

    def candidate_sizes(self, scan_id: int, min_size: int) -> list[int]:
        """Sizes shared by 2+ distinct inodes seen in this scan, ascending."""
        p = self.db.p
        return [int(r[0]) for r in self.db.rows(
            f"SELECT size FROM inodes WHERE seen = {p} AND size >= {p} "
            "GROUP BY size HAVING count(*) > 1 ORDER BY size", (scan_id, max(min_size, 1)))]

    def files_of_sizes(self, scan_id: int, sizes: Sequence[int]) -> Iterator[list[IndexedFile]]:
        """Yield one list per size (ascending): the inodes of that size seen in this scan.

        Two queries (inodes by size, then their paths by inode) rather than a
        join: SQLite plans the join as a walk over every path of the scan per
        call, which turns a scan quadratic in its number of files.
        """
        p = self.db.p
        for part in chunks(sorted(sizes), 1000):
            rows = self.db.rows(
                'SELECT dev, ino, size, mtime_ns, ctime_ns, head, "full", unstable FROM inodes '
                f"WHERE seen = {p} AND size IN ({self.db.marks(len(part))}) "
                "ORDER BY size, dev, ino", (scan_id, *part))
            names = self._paths_of(scan_id, [(r[0], r[1]) for r in rows])
            yield from group_rows(rows, names)

    def _paths_of(self, scan_id: int, keys: list[tuple[int, int]]
                  ) -> dict[tuple[int, int], list[bytes]]:
        """Paths seen in this scan for the given (signed) inode keys, sorted per inode."""
        by_dev: dict[int, list[int]] = defaultdict(list)
        for d, n in keys:
            by_dev[d].append(n)
        out: dict[tuple[int, int], list[bytes]] = defaultdict(list)
        cur = self.db.conn().cursor()
        try:
            for d, inos in by_dev.items():
                for part in chunks(inos, BATCH):
                    for ino, path in self.bulk.paths_of_inodes(cur, scan_id, d, part):
                        out[(d, ino)].append(path)
        finally:
            cur.close()
        for v in out.values():
            v.sort()
        return out

    def candidate_groups(self, scan_id: int, min_size: int) -> Iterator[list[IndexedFile]]:
        """One list per candidate size (ascending): the inodes of that size seen in
        this scan, when 2+ distinct inodes share it."""
        return self.size_groups(scan_id, max(min_size, 1), min_count=2)

    def size_groups(self, scan_id: int, min_size: int = 0, min_count: int = 1,
                    rows_per_query: int = 5000) -> Iterator[list[IndexedFile]]:
        """One list per size (ascending) of the inodes seen in this scan, for sizes
        >= min_size held by at least min_count inodes.

        Paged by size (keyset) so no read transaction stays open while the caller
        writes hashes: a long-lived SQLite reader would stop WAL checkpoints and
        let the WAL grow with every hash written. Memory holds one page of about
        rows_per_query rows (or one larger size group).
        """
        p = self.db.p
        last = min_size - 1
        while True:
            counts = self.db.rows(
                f"SELECT size, count(*) FROM inodes WHERE seen = {p} AND size > {p} "
                f"GROUP BY size HAVING count(*) >= {p} ORDER BY size LIMIT 1000",
                (scan_id, last, max(min_count, 1)))
            if not counts:
                return
            page, n = [], 0
            for size, count in counts:
                page.append(int(size))
                n += count
                if n >= rows_per_query:
                    break
            last = page[-1]
            yield from self.files_of_sizes(scan_id, page)

    def save_hashes(self, updates: Sequence[HashUpdate]) -> None:
        if not updates:
            return
        rows: list[tuple[Any, ...]] = []
        checked: list[tuple[Any, ...]] = []
        for u in updates:
            row = (None if u.head is None else to_s64(u.head), u.full, to_s64(u.dev),
                   to_s64(u.ino))
            if u.stat is None:
                rows.append(row)
            else:
                checked.append((*row, *u.stat))
        with self.db.tx() as cur:
            if rows:
                self.bulk.save_hashes(cur, rows)
            if checked:
                self.bulk.save_hashes(cur, checked, same_stat=True)

    def accept_own_ctimes(self, changes: Sequence[tuple[Ident, Ident]]) -> None:
        """Take the new ctime of inodes that only dedupd's own links changed (before,
        after; applied in order), where the index still holds the before stat: else the
        next pass would count every linked file as changed and read it again."""
        rows = [(new.ctime_ns, to_s64(old.dev), to_s64(old.ino), old.size, old.mtime_ns,
                 old.ctime_ns) for old, new in changes]
        if rows:
            with self.db.tx() as cur:
                self.bulk.set_ctimes(cur, rows)

    def counts(self) -> dict[str, int]:
        one = self.db.rows
        return {"inodes": int(one("SELECT count(*) FROM inodes")[0][0]),
                "paths": int(one("SELECT count(*) FROM paths")[0][0]),
                "hashed": int(one('SELECT count(*) FROM inodes WHERE "full" IS NOT NULL')[0][0])}


def _inode_row(k: tuple[int, int], e: FileEvent, scan_id: int, now: float,
               unstable: int) -> tuple[Any, ...]:
    """A row in bulk.INODE_COLS order; a new or changed inode has no hashes yet."""
    return (k[0], k[1], e.size, e.mtime_ns, e.ctime_ns, e.mode, e.uid, e.gid, e.nlink,
            None, None, scan_id, now, unstable)


def group_rows(rows: Iterable[Any], names: dict[tuple[int, int], list[bytes]]
                ) -> Iterator[list[IndexedFile]]:
    """Rows ordered by size -> one list of IndexedFile per size (inodes with no path
    seen in this scan are left out)."""
    group: list[IndexedFile] = []
    for d, n, size, mt, ct, head, full, unst in rows:
        paths = names.get((d, n))
        if not paths:
            continue
        if group and group[-1].size != size:
            yield group
            group = []
        group.append(IndexedFile(from_s64(d), from_s64(n), size, mt, ct,
                                 None if head is None else from_s64(head), full, unst,
                                 tuple(paths)))
    if group:
        yield group


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    """items in slices of at most n (bound parameters per statement are limited)."""
    for k in range(0, len(items), n):
        yield items[k : k + n]
