"""Provenance queries: which source paths hold the content of which archive file.

Functions take a Store (the index) and return frozen dataclasses. Rows are
written by `dedupd consolidate` only after the content was confirmed equal
(by the verified copy or by a byte compare); `dedupd where` reads them.
Rows belong to the Store's host; a source's filesystem is stored by id (src_fs)
and handed out as the device it has now (src_dev; -1 while it is not mounted,
which no file matches, so such a source is read again).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update

from dedupd.index import schema as s
from dedupd.index.schema import from_s64, to_s64
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


_COLS = (s.provenance.c.consolidation, s.provenance.c.source_path,
         s.provenance.c.archive_path, s.provenance.c.content, s.provenance.c.size,
         s.provenance.c.src_fs, s.provenance.c.src_ino, s.provenance.c.src_mtime_ns,
         s.provenance.c.src_ctime_ns, s.provenance.c.first_seen, s.provenance.c.last_seen)


def _rows(store: Store, rows: Iterable[Sequence[Any]]) -> Iterator[Provenance]:
    for r in rows:
        src = bytes(r[1])
        dev = store.dev_of(int(r[5]), os.path.dirname(src) or b"/")
        yield Provenance(str(r[0]), src, bytes(r[2]), bytes(r[3]), int(r[4]),
                         -1 if dev is None else dev, from_s64(int(r[6])), int(r[7]), int(r[8]),
                         float(r[9]), float(r[10]))


def _mine(store: Store) -> Any:
    return s.provenance.c.host == store.host


def load(store: Store, consolidation: str) -> dict[bytes, Provenance]:
    """Every row of one consolidation, keyed by source path."""
    q = select(*_COLS).where(s.provenance.c.consolidation == consolidation, _mine(store))
    with store.engine.connect() as c:
        return {p.source_path: p for p in _rows(store, c.execute(q))}


def save(store: Store, rows: Iterable[Provenance]) -> int:
    """Insert or replace rows (keyed by consolidation + source path); first_seen is kept."""
    docs = [{
        "host": store.host, "consolidation": p.consolidation, "source_key": path_key(p.source_path),
        "source_path": p.source_path, "archive_key": path_key(p.archive_path),
        "archive_path": p.archive_path, "content": p.content, "size": p.size,
        "src_fs": store.fs_of(p.src_dev, p.source_path), "src_ino": to_s64(p.src_ino),
        "src_mtime_ns": p.src_mtime_ns, "src_ctime_ns": p.src_ctime_ns,
        "first_seen": p.first_seen, "last_seen": p.last_seen} for p in rows]
    if not docs:
        return 0
    ins = store.insert(s.provenance)
    keep = {k: ins.excluded[k] for k in docs[0]
            if k not in ("host", "consolidation", "source_key", "first_seen")}
    with store.engine.begin() as c:
        c.execute(ins.on_conflict_do_update(
            index_elements=["host", "consolidation", "source_key"], set_=keep), docs)
    return len(docs)


def touch(store: Store, consolidation: str, source_paths: Sequence[bytes],
          when: float | None = None) -> None:
    """Mark rows as seen again now (the source was unchanged and still in the archive)."""
    now = time.time() if when is None else when
    t = s.provenance.c
    keys = [path_key(p) for p in source_paths]
    with store.engine.begin() as c:
        for k in range(0, len(keys), BATCH):
            c.execute(update(s.provenance)
                      .where(_mine(store), t.consolidation == consolidation,
                             t.source_key.in_(keys[k:k + BATCH]))
                      .values(last_seen=now))


def forget_archive_paths(store: Store, consolidation: str, keep: set[bytes]) -> int:
    """Drop rows whose archive file is no longer in the archive (renamed or removed)."""
    t = s.provenance.c
    q = select(t.source_key, t.archive_path).where(t.consolidation == consolidation, _mine(store))
    with store.engine.connect() as c:
        gone = [r[0] for r in c.execute(q) if bytes(r[1]) not in keep]
    with store.engine.begin() as c:
        for k in range(0, len(gone), BATCH):
            c.execute(delete(s.provenance).where(_mine(store), t.consolidation == consolidation,
                                                 t.source_key.in_(gone[k:k + BATCH])))
    return len(gone)


def sources_of(store: Store, archive_path: bytes) -> list[Provenance]:
    """Every source path recorded for one archive file (all consolidations)."""
    q = (select(*_COLS).where(s.provenance.c.archive_key == path_key(archive_path), _mine(store))
         .order_by(s.provenance.c.source_path))
    with store.engine.connect() as c:
        return [p for p in _rows(store, c.execute(q)) if p.archive_path == archive_path]


def archive_of(store: Store, source_path: bytes) -> list[Provenance]:
    """Where one source path's content lives in the archive (one row per consolidation)."""
    q = select(*_COLS).where(s.provenance.c.source_key == path_key(source_path),
                             _mine(store))
    with store.engine.connect() as c:
        return [p for p in _rows(store, c.execute(q)) if p.source_path == source_path]


def by_content(store: Store, content: bytes) -> list[Provenance]:
    """Rows whose content hash is `content` (a source file not recorded by path yet)."""
    q = select(*_COLS).where(s.provenance.c.content == content, _mine(store))
    with store.engine.connect() as c:
        return list(_rows(store, c.execute(q)))


def sizes_seen(store: Store, scan_id: int) -> list[int]:
    """Distinct sizes of the inodes a scan saw, ascending."""
    t = s.inodes.c
    q = select(t.size).where(t.seen == scan_id).group_by(t.size).order_by(t.size)
    with store.engine.connect() as c:
        return [int(r[0]) for r in c.execute(q)]


def count(store: Store, consolidation: str) -> int:
    q = (select(func.count()).select_from(s.provenance)
         .where(s.provenance.c.consolidation == consolidation, _mine(store)))
    with store.engine.connect() as c:
        return int(c.execute(q).scalar() or 0)


def files_by_size(store: Store, scan_id: int) -> Iterator[list[IndexedFile]]:
    """Every inode a scan saw, with its paths seen, one list per size (ascending)."""
    return store.size_groups(scan_id)


