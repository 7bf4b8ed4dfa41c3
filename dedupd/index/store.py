"""Store: every query the index answers, behind one class.

Blocking (sync SQLAlchemy): the daemon calls it from worker threads. Stages get
frozen dataclasses back, never rows. Work is done in batches so memory stays
bounded whatever the number of indexed files.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from dedupd.errors import DedupdError, TemporaryFailure
from dedupd.index import schema as s
from dedupd.index.bulk import Bulk
from dedupd.index.schema import from_s64, to_s64
from dedupd.scan.events import FileEvent

BATCH = 1000  # keys per IN (...) query; well under SQLite's variable limit


class IndexError_(DedupdError):
    """The index cannot be opened or queried."""


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


@dataclass(frozen=True)
class RecordResult:
    new: int
    changed: int
    unchanged: int


def path_key(path: bytes) -> bytes:
    return hashlib.blake2b(path, digest_size=16).digest()


def engine_url(url: str) -> str:
    """psycopg 3 is the PostgreSQL driver we ship; a bare postgresql:// means it."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    url = engine_url(url)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        where = Path(url[len("sqlite:///") :]).parent
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IndexError_(f"cannot create the index directory {where}: {e.strerror}") from None
    try:
        engine = create_engine(url, future=True)
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise IndexError_(f"cannot use database URL {url!r}: {e}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Store:
    """The index. Thread-safe as far as the engine's pool is (one Store per process)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self.bulk = Bulk(self.dialect)
        try:
            s.metadata.create_all(self.engine)
            self._set_meta_default("schema_version", str(s.SCHEMA_VERSION))
        except OperationalError as e:
            raise TemporaryFailure(f"index {url}: cannot open: {e.orig}") from None
        except SQLAlchemyError as e:
            raise IndexError_(f"index {url}: {e}") from None

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: Any) -> Any:
        # imported here: loading the PostgreSQL dialect costs ~0.1 s of every start
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table)
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)

    # --- meta: small key/value state (per-volume generations, timestamps) ---

    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(s.meta.c.value).where(s.meta.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        ins = self._insert(s.meta).values(key=key, value=value)
        with self.engine.begin() as c:
            c.execute(ins.on_conflict_do_update(index_elements=["key"], set_={"value": value}))

    def _set_meta_default(self, key: str, value: str) -> None:
        with self.engine.begin() as c:
            c.execute(self._insert(s.meta).values(key=key, value=value).on_conflict_do_nothing())

    # --- scans ---

    def begin_scan(self, roots: Sequence[bytes]) -> int:
        doc = json.dumps([os.fsdecode(r) for r in roots])
        with self.engine.begin() as c:
            res = c.execute(s.scans.insert().values(started=time.time(), roots=doc))
            pk = res.inserted_primary_key
            assert pk is not None
            return int(pk[0])

    def record(self, scan_id: int, events: Sequence[FileEvent]) -> RecordResult:
        """Upsert one batch of walk results; unchanged inodes keep their hashes.

        An inode is unchanged when size, mtime_ns and ctime_ns all match (ctime
        catches writes that preserved mtime). Idempotent for a given scan_id.
        """
        by_key = {(to_s64(e.dev), to_s64(e.ino)): e for e in events}
        pkeys = {path_key(e.path): e for e in events}
        now = time.time()
        new = changed = 0
        upserts: list[tuple[Any, ...]] = []
        touched: dict[int, list[int]] = defaultdict(list)
        with self.engine.begin() as c:
            # One lookup answers the common (rescan) case: the path is known, still
            # names the same inode, and that inode's stat is on the same row.
            known: dict[bytes, tuple[int, int]] = {}
            old: dict[tuple[int, int], tuple[int, ...]] = {}
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
                o = old.get(k)
                if o is not None and o[:3] == (e.size, e.mtime_ns, e.ctime_ns):
                    touched[k[0]].append(k[1])
                    continue
                new, changed = (new + 1, changed) if o is None else (new, changed + 1)
                upserts.append(_inode_row(k, e, scan_id, now, 0 if o is None else o[3] + 1))
            same, prow = [], []
            for pk, e in pkeys.items():
                if known.get(pk) == (to_s64(e.dev), to_s64(e.ino)):
                    same.append(pk)
                else:
                    prow.append((pk, e.path, to_s64(e.dev), to_s64(e.ino), scan_id))
            if upserts:
                self.bulk.upsert_inodes(c, upserts)
            for d, inos in touched.items():
                self.bulk.touch_inodes(c, scan_id, d, inos)
            if same:
                self.bulk.touch_paths(c, scan_id, same)
            if prow:
                self.bulk.upsert_paths(c, prow)
        return RecordResult(new, changed, sum(len(v) for v in touched.values()))

    def finish_scan(self, scan_id: int, roots: Sequence[bytes]) -> int:
        """Forget paths under `roots` that this scan did not see; drop orphan inodes.

        Returns the number of paths forgotten. Paths outside the roots are untouched.
        """
        prefixes = [r.rstrip(b"/") + b"/" for r in roots]
        gone: list[bytes] = []
        p = s.paths.c
        with self.engine.connect() as c:
            q = select(p.path_key, p.path).where(p.seen < scan_id)
            for key, path in c.execution_options(yield_per=5000).execute(q):
                if any(path.startswith(x) or path + b"/" == x for x in prefixes):
                    gone.append(key)
        with self.engine.begin() as c:
            for part in _chunks(gone, BATCH):
                c.execute(delete(s.paths).where(p.path_key.in_(part)))
            self._drop_orphans(c)
            c.execute(update(s.scans).where(s.scans.c.id == scan_id)
                      .values(finished=time.time()))
        return len(gone)

    def _drop_orphans(self, c: Any) -> None:
        i, p = s.inodes.c, s.paths.c
        has_path = select(p.dev).where(p.dev == i.dev, p.ino == i.ino).exists()
        c.execute(delete(s.inodes).where(~has_path))

    def forget(self, keys: Iterable[tuple[int, int]]) -> None:
        """Remove inodes (and their paths) that turned out to be gone."""
        ks = [(to_s64(d), to_s64(n)) for d, n in keys]
        with self.engine.begin() as c:
            for part in _chunks(ks, BATCH):
                c.execute(delete(s.paths).where(tuple_(s.paths.c.dev, s.paths.c.ino).in_(part)))
                c.execute(delete(s.inodes).where(tuple_(s.inodes.c.dev, s.inodes.c.ino)
                                                 .in_(part)))

    # --- candidates and hashes ---

    def candidate_sizes(self, scan_id: int, min_size: int) -> list[int]:
        """Sizes shared by 2+ distinct inodes seen in this scan, ascending."""
        t = s.inodes.c
        q = (select(t.size).where(t.seen == scan_id, t.size >= max(min_size, 1))
             .group_by(t.size).having(func.count() > 1).order_by(t.size))
        with self.engine.connect() as c:
            return [r[0] for r in c.execute(q)]

    def files_of_sizes(self, scan_id: int, sizes: Sequence[int]) -> Iterator[list[IndexedFile]]:
        """Yield one list per size (ascending): the inodes of that size seen in this scan.

        Two queries (inodes by size, then their paths by inode) rather than a
        join: SQLite plans the join as a walk over every path of the scan per
        call, which turns a scan quadratic in its number of files.
        """
        i = s.inodes.c
        for part in _chunks(sorted(sizes), 1000):
            q = (select(i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns, i.head, i.full, i.unstable)
                 .where(i.seen == scan_id, i.size.in_(part))
                 .order_by(i.size, i.dev, i.ino))
            with self.engine.connect() as c:
                rows = c.execute(q).all()
                names = self._paths_of(c, scan_id, [(r[0], r[1]) for r in rows])
            yield from _group_rows(rows, names)

    def _paths_of(self, c: Any, scan_id: int, keys: list[tuple[int, int]]
                  ) -> dict[tuple[int, int], list[bytes]]:
        """Paths seen in this scan for the given (signed) inode keys, sorted per inode."""
        by_dev: dict[int, list[int]] = defaultdict(list)
        for d, n in keys:
            by_dev[d].append(n)
        out: dict[tuple[int, int], list[bytes]] = defaultdict(list)
        for d, inos in by_dev.items():
            for part in _chunks(inos, BATCH):
                for ino, path in self.bulk.paths_of_inodes(c, scan_id, d, part):
                    out[(d, ino)].append(path)
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
        i = s.inodes.c
        last = min_size - 1
        while True:
            q = (select(i.size, func.count()).where(i.seen == scan_id, i.size > last)
                 .group_by(i.size).order_by(i.size).limit(1000))
            if min_count > 1:
                q = q.having(func.count() >= min_count)
            with self.engine.connect() as c:
                counts = c.execute(q).all()
            if not counts:
                return
            page, n = [], 0
            for size, count in counts:
                page.append(size)
                n += count
                if n >= rows_per_query:
                    break
            last = page[-1]
            yield from self.files_of_sizes(scan_id, page)

    def save_hashes(self, updates: Sequence[HashUpdate]) -> None:
        if not updates:
            return
        rows = [{"d": to_s64(u.dev), "i": to_s64(u.ino),
                 "h": None if u.head is None else to_s64(u.head), "f": u.full}
                for u in updates]
        t = s.inodes.c
        with self.engine.begin() as c:
            c.execute(update(s.inodes).where(t.dev == _bp("d"), t.ino == _bp("i"))
                      .values(head=_bp("h"), full=_bp("f"), unstable=0), rows)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            n_inodes = c.execute(select(func.count()).select_from(s.inodes)).scalar() or 0
            n_paths = c.execute(select(func.count()).select_from(s.paths)).scalar() or 0
            hashed = c.execute(select(func.count()).select_from(s.inodes)
                               .where(s.inodes.c.full.is_not(None))).scalar() or 0
        return {"inodes": n_inodes, "paths": n_paths, "hashed": hashed}


def _inode_row(k: tuple[int, int], e: FileEvent, scan_id: int, now: float,
               unstable: int) -> tuple[Any, ...]:
    """A row in bulk.INODE_COLS order; a new or changed inode has no hashes yet."""
    return (k[0], k[1], e.size, e.mtime_ns, e.ctime_ns, e.mode, e.uid, e.gid, e.nlink,
            None, None, scan_id, now, unstable)


def _group_rows(rows: Iterable[Any], names: dict[tuple[int, int], list[bytes]]
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


def _bp(name: str) -> Any:
    return bindparam(name)


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for k in range(0, len(items), n):
        yield items[k : k + n]
