"""Index queries for extent-dedupe volumes: incremental scans, group state, stats.

Functions take a Store; nothing here changes the foundation's tables' meaning.
Incremental passes record only changed files under a scan id and never call
Store.finish_scan (which would forget every path the scan did not see).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, tuple_, update

from dedupd.index import schema as s
from dedupd.index.schema import from_s64, to_s64
from dedupd.index.store import BATCH, IndexedFile, Store, _chunks, _group_rows

Key = tuple[int, int]


def under(path: bytes, roots: Sequence[bytes]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def _range(root: bytes) -> Any:
    """SQL condition: path strictly below root (bytewise range, no LIKE escaping)."""
    lo = root.rstrip(b"/") + b"/"
    hi = root.rstrip(b"/") + b"0"  # '0' sorts right after '/'
    return and_(s.paths.c.path >= lo, s.paths.c.path < hi)


def finish_incremental(store: Store, scan_id: int) -> None:
    with store.engine.begin() as c:
        c.execute(update(s.scans).where(s.scans.c.id == scan_id).values(finished=time.time()))


def paths_below(store: Store, root: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(path_key, path, dev, ino) of every indexed path below root."""
    p = s.paths.c
    q = select(p.path_key, p.path, p.dev, p.ino).where(_range(root))
    with store.engine.connect() as c:
        for k, path, d, n in c.execution_options(yield_per=5000).execute(q):
            yield k, path, from_s64(d), from_s64(n)


def forget_paths(store: Store, path_keys: Sequence[bytes]) -> int:
    """Drop these paths, then inodes left without any path. Returns paths dropped."""
    if not path_keys:
        return 0
    i, p = s.inodes.c, s.paths.c
    with store.engine.begin() as c:
        for part in _chunks(list(path_keys), BATCH):
            c.execute(delete(s.paths).where(p.path_key.in_(part)))
        has_path = select(p.dev).where(p.dev == i.dev, p.ino == i.ino).exists()
        c.execute(delete(s.inodes).where(~has_path))
    return len(path_keys)


def pending_sizes(store: Store, roots: Sequence[bytes], min_size: int) -> list[int]:
    """Sizes with 2+ inodes under roots where some inode was never read (left pending).

    One query: a volume of unique sizes (photos) must not cost one query per size.
    """
    i, p = s.inodes.c, s.paths.c
    inner = (select(i.dev, i.ino, i.size, i.head)
             .join(s.paths, and_(p.dev == i.dev, p.ino == i.ino))
             .where(or_(*[_range(r) for r in roots]), i.size >= max(min_size, 1))
             .distinct().subquery())
    unread = func.sum(case((inner.c.head.is_(None), 1), else_=0))
    q = (select(inner.c.size).group_by(inner.c.size)
         .having(and_(func.count() > 1, unread > 0)).order_by(inner.c.size))
    with store.engine.connect() as c:
        return [r[0] for r in c.execute(q)]


def files_of_sizes(store: Store, sizes: Sequence[int],
                   roots: Sequence[bytes]) -> Iterator[list[IndexedFile]]:
    """Like Store.files_of_sizes but over the whole index (any scan), limited to roots."""
    i, p = s.inodes.c, s.paths.c
    for part in _chunks(sorted(set(sizes)), 200):
        q = (select(i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns, i.head, i.full,
                    i.unstable, p.path)
             .join(s.paths, and_(p.dev == i.dev, p.ino == i.ino))
             .where(i.size.in_(part)).order_by(i.size, i.dev, i.ino, p.path))
        with store.engine.connect() as c:
            rows = [r for r in c.execute(q).all() if under(r[8], roots)]
        names: dict[tuple[int, int], list[bytes]] = {}
        inodes = []
        for r in rows:  # ordered by inode then path: one inode row, all its names
            if (r[0], r[1]) not in names:
                names[(r[0], r[1])] = []
                inodes.append(tuple(r[:8]))
            names[(r[0], r[1])].append(r[8])
        yield from _group_rows(inodes, names)


# --- group state ---

def mark_done(store: Store, rows: Sequence[tuple[Key, bytes, Key, int]]) -> None:
    """Record (key, full, ref_key, bytes) as confirmed shared with the reference."""
    if not rows:
        return
    now = time.time()
    vals = [{"dev": to_s64(k[0]), "ino": to_s64(k[1]), "full": full, "ref_dev": to_s64(r[0]),
             "ref_ino": to_s64(r[1]), "bytes": n, "at": now} for k, full, r, n in rows]
    ins = store._insert(s.extent_done)
    cols = {n: ins.excluded[n] for n in ("full", "ref_dev", "ref_ino", "bytes", "at")}
    with store.engine.begin() as c:
        c.execute(ins.on_conflict_do_update(index_elements=["dev", "ino"], set_=cols), vals)


def set_refs(store: Store, refs: Sequence[tuple[int, bytes, Key]]) -> None:
    """Remember (size, full) -> reference key, replacing an older choice."""
    if not refs:
        return
    rows = [{"size": size, "full": full, "dev": to_s64(k[0]), "ino": to_s64(k[1])}
            for size, full, k in refs]
    ins = store._insert(s.extent_refs)
    with store.engine.begin() as c:
        c.execute(ins.on_conflict_do_update(index_elements=["size", "full"],
                                            set_={"dev": ins.excluded.dev,
                                                  "ino": ins.excluded.ino}), rows)


def group_state(store: Store, size: int, full: bytes, keys: Iterable[Key]
                ) -> tuple[Key | None, dict[Key, tuple[bytes, Key]]]:
    """(remembered reference, done rows of keys) in one round trip to the index."""
    t, d = s.extent_refs.c, s.extent_done.c
    ks = [(to_s64(a), to_s64(b)) for a, b in keys]
    done: dict[Key, tuple[bytes, Key]] = {}
    with store.engine.connect() as c:
        r = c.execute(select(t.dev, t.ino).where(t.size == size, t.full == full)).first()
        for part in _chunks(ks, BATCH):
            q = select(d.dev, d.ino, d.full, d.ref_dev, d.ref_ino).where(
                tuple_(d.dev, d.ino).in_(part))
            for dv, n, f, rd, rn in c.execute(q):
                done[(from_s64(dv), from_s64(n))] = (f, (from_s64(rd), from_s64(rn)))
    ref = None if r is None else (from_s64(r[0]), from_s64(r[1]))
    return ref, done


def has_group_state(store: Store) -> bool:
    """Whether any reference or done mark is stored (none on a volume's first pass)."""
    with store.engine.connect() as c:
        for t in (s.extent_refs, s.extent_done):
            if c.execute(select(t.c.dev).limit(1)).first() is not None:
                return True
    return False


def reset_done_before(store: Store, when: float) -> int:
    """Forget 'done' marks older than `when` so those files are verified again."""
    with store.engine.begin() as c:
        r = c.execute(delete(s.extent_done).where(s.extent_done.c.at < when))
        return int(r.rowcount or 0)


def maintain(store: Store) -> None:
    """VACUUM/ANALYZE (SQLite) or ANALYZE (PostgreSQL; autovacuum does the rest)."""
    from sqlalchemy import text

    if store.dialect == "sqlite":
        with store.engine.connect() as c:
            c.exec_driver_sql("VACUUM")
            c.exec_driver_sql("ANALYZE")
    else:
        with store.engine.begin() as c:
            c.execute(text("ANALYZE"))


# --- stats ---

def volume_stats(store: Store, root: bytes) -> dict[str, int]:
    """Counts over the inodes with a path below root."""
    i, p, d = s.inodes.c, s.paths.c, s.extent_done.c
    inner = (select(i.dev, i.ino, i.size, i.head, i.full)
             .join(s.paths, and_(p.dev == i.dev, p.ino == i.ino))
             .where(_range(root)).distinct().subquery())
    q = inner.c
    with store.engine.connect() as c:
        files = c.execute(select(func.count()).select_from(inner)).scalar() or 0
        hashed = c.execute(select(func.count()).select_from(inner)
                           .where(q.full.is_not(None))).scalar() or 0
        grp = (select(q.size, q.full, func.count().label("n")).where(q.full.is_not(None))
               .group_by(q.size, q.full).having(func.count() > 1).subquery())
        groups = c.execute(select(func.count()).select_from(grp)).scalar() or 0
        dup_bytes = c.execute(select(func.coalesce(func.sum(grp.c.size * (grp.c.n - 1)), 0))
                              ).scalar() or 0
        done = c.execute(select(func.count(), func.coalesce(func.sum(d.bytes), 0))
                         .select_from(s.extent_done.join(
                             inner, and_(inner.c.dev == d.dev, inner.c.ino == d.ino)))).first()
        paths = c.execute(select(func.count()).select_from(s.paths).where(_range(root))
                          ).scalar() or 0
    return {"files_indexed": int(files), "paths_indexed": int(paths), "hashed": int(hashed),
            "duplicate_groups": int(groups), "duplicate_bytes": int(dup_bytes),
            "files_deduped": int(done[0] if done else 0),
            "bytes_deduped": int(done[1] if done else 0)}


def full_hash(store: Store, key: Key) -> bytes | None:
    """The stored full hash of an inode (the hasher's groups may not carry it)."""
    i = s.inodes.c
    with store.engine.connect() as c:
        return c.execute(select(i.full).where(i.dev == to_s64(key[0]),
                                              i.ino == to_s64(key[1]))).scalar()
