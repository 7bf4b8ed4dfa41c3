"""Provenance queries: which source paths hold the content of which archive file.

Functions take a Store (the index) and return frozen dataclasses. Rows are
written by `dedupd consolidate` only after the content was confirmed equal
(by the verified copy or by a byte compare); `dedupd where` reads them.
Rows belong to the Store's host; a source's filesystem is stored by id (src_fs)
and handed out as the device it has now (src_dev; -1 while it is not mounted,
which no file matches, so such a source is read again). Plain SQL on the Store's
DB-API connection, the same text for SQLite and PostgreSQL (docs/schema.md, "One
query style").
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from dedupd.index.db import S64, U64, chunks, from_s64
from dedupd.index.store import BATCH, IndexedFile, Store, path_key


@dataclass(frozen=True, slots=True)
class Provenance:
    """One source path whose content lives in one archive file."""

    consolidation: str
    source_path: bytes
    archive_path: bytes
    content: bytes
    size: int
    src_dev: int
    src_ino: int
    src_mtime_ns: int
    src_ctime_ns: int
    first_seen: float
    last_seen: float

    def matches_stat(self, dev: int, ino: int, size: int, mtime_ns: int, ctime_ns: int) -> bool:
        """True when the source is still the very file that was confirmed."""
        return (self.src_dev, self.src_ino, self.size, self.src_mtime_ns,
                self.src_ctime_ns) == (dev, ino, size, mtime_ns, ctime_ns)


# Provenance's fields in order (src_fs becomes src_dev): a row converts by _rows.
_COLS = ("consolidation", "source_path", "archive_path", "content", "size", "src_fs",
         "src_ino", "src_mtime_ns", "src_ctime_ns", "first_seen", "last_seen")
_SELECT = f"SELECT {', '.join(_COLS)} FROM provenance"
# every column a row writes; those after the key are replaced on conflict, but first_seen
_WRITE = ("host", "consolidation", "source_key", "source_path", "archive_key", "archive_path",
          "content", "size", "src_fs", "src_ino", "src_mtime_ns", "src_ctime_ns",
          "first_seen", "last_seen")
_INSERT = f"INSERT INTO provenance ({', '.join(_WRITE)})"
_UPSERT = " ON CONFLICT (host, consolidation, source_key) DO UPDATE SET " + ", ".join(
    f"{k} = excluded.{k}" for k in _WRITE[3:] if k != "first_seen")


def _rows(store: Store, rows: Iterable[Sequence[Any]]) -> Iterator[Provenance]:
    for r in rows:
        src = bytes(r[1])
        dev = store.dev_of(int(r[5]), os.path.dirname(src) or b"/")
        yield Provenance(str(r[0]), src, bytes(r[2]), bytes(r[3]), int(r[4]),
                         -1 if dev is None else dev, from_s64(int(r[6])), int(r[7]), int(r[8]),
                         float(r[9]), float(r[10]))


def _select(store: Store, where: str, params: Sequence[Any], order: str = "") -> list[Any]:
    """Rows of _SELECT of this host's provenance matching `where` (placeholders: p)."""
    p = store.db.p
    return store.db.rows(f"{_SELECT} WHERE host = {p} AND {where.format(p=p)}{order}",
                         (store.host, *params))


def load(store: Store, consolidation: str) -> dict[bytes, Provenance]:
    """Every row of one consolidation, keyed by source path."""
    rows = _select(store, "consolidation = {p}", (consolidation,))
    return {p.source_path: p for p in _rows(store, rows)}


def save(store: Store, rows: Iterable[Provenance]) -> int:
    """Insert or replace rows (keyed by consolidation + source path); first_seen is kept."""
    return save_fields(store, [(p.consolidation, p.source_path, p.archive_path, p.content,
                                p.size, p.src_dev, p.src_ino, p.src_mtime_ns, p.src_ctime_ns,
                                p.first_seen, p.last_seen) for p in rows])


def save_fields(store: Store, rows: Sequence[Sequence[Any]]) -> int:
    """save() of rows given as Provenance's fields in order (the index writer's wire
    form, consolidate/rows.py: no object made per row only to be taken apart). An
    archive file named by several rows of the batch has its key computed once.
    One row a statement (executemany), not many as Bulk's inserts: a statement of
    many rows dirties a page of each of the table's B-trees a row (random keys),
    and SQLite copies those already dirty in the transaction to a statement journal
    (a temporary file: 150 MB of writes for a first import's 23,000 rows)."""
    if not rows:
        return 0
    host, fs_of = store.host, store.fs_of
    fss: dict[int, int] = {}  # st_dev -> filesystem id, for this batch
    akeys: dict[bytes, bytes] = {}  # archive path -> its key
    docs = []
    for cons, src, arch, content, size, dev, ino, mtime, ctime, first, last in rows:
        fs = fss.get(dev)
        if fs is None:
            fs = fss[dev] = fs_of(dev, src)
        akey = akeys.get(arch)
        if akey is None:
            akey = akeys[arch] = path_key(arch)
        docs.append((host, cons, path_key(src), src, akey, arch, content, size, fs,
                     ino - U64 if ino >= S64 else ino, mtime, ctime, first, last))
    with store.db.tx() as cur:
        cur.executemany(f"{_INSERT} VALUES ({store.db.marks(len(_WRITE))}){_UPSERT}", docs)
    return len(docs)


def touch(store: Store, consolidation: str, source_paths: Sequence[bytes],
          when: float | None = None) -> None:
    """Mark rows as seen again now (the source was unchanged and still in the archive)."""
    now = time.time() if when is None else when
    _by_keys(store, f"UPDATE provenance SET last_seen = {store.db.p}", (now,), consolidation,
             [path_key(p) for p in source_paths])


def _by_keys(store: Store, head: str, params: tuple[Any, ...], consolidation: str,
             keys: list[bytes]) -> None:
    """Run `head` (UPDATE ... SET or DELETE FROM provenance) on this host's rows of
    one consolidation with the given source keys, BATCH keys a statement, in one
    transaction."""
    p = store.db.p
    with store.db.tx() as cur:
        for part in chunks(keys, BATCH):
            cur.execute(f"{head} WHERE host = {p} AND consolidation = {p} AND source_key IN "
                        f"({store.db.marks(len(part))})",
                        (*params, store.host, consolidation, *part))


def forget_archive_paths(store: Store, consolidation: str, keep: set[bytes]) -> int:
    """Drop rows whose archive file is no longer in the archive (renamed or removed)."""
    p = store.db.p
    gone = [bytes(r[0]) for r in store.db.rows(
        f"SELECT source_key, archive_path FROM provenance WHERE host = {p} "
        f"AND consolidation = {p}", (store.host, consolidation)) if bytes(r[1]) not in keep]
    _by_keys(store, "DELETE FROM provenance", (), consolidation, gone)
    return len(gone)


def sources_of(store: Store, archive_path: bytes) -> list[Provenance]:
    """Every source path recorded for one archive file (all consolidations)."""
    rows = _select(store, "archive_key = {p}", (path_key(archive_path),),
                   " ORDER BY source_path")
    return [p for p in _rows(store, rows) if p.archive_path == archive_path]


def archive_of(store: Store, source_path: bytes) -> list[Provenance]:
    """Where one source path's content lives in the archive (one row per consolidation)."""
    rows = _select(store, "source_key = {p}", (path_key(source_path),))
    return [p for p in _rows(store, rows) if p.source_path == source_path]


def by_content(store: Store, content: bytes) -> list[Provenance]:
    """Rows whose content hash is `content` (a source file not recorded by path yet)."""
    return list(_rows(store, _select(store, "content = {p}", (content,))))


def sizes_seen(store: Store, scan_id: int) -> list[int]:
    """Distinct sizes of the inodes a scan saw, ascending."""
    return [int(r[0]) for r in store.db.rows(
        f"SELECT size FROM inodes WHERE seen = {store.db.p} GROUP BY size ORDER BY size",
        (scan_id,))]


def count(store: Store, consolidation: str) -> int:
    p = store.db.p
    rows = store.db.rows(f"SELECT count(*) FROM provenance WHERE host = {p} "
                         f"AND consolidation = {p}", (store.host, consolidation))
    return int(rows[0][0] or 0)


def files_by_size(store: Store, scan_id: int) -> Iterator[list[IndexedFile]]:
    """Every inode a scan saw, with its paths seen, one list per size (ascending)."""
    return store.size_groups(scan_id)
