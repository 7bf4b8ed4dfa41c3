"""Index queries for extent-dedupe volumes: incremental scans, group state, stats.

Functions take a Store; nothing here changes the foundation's tables' meaning.
Incremental passes record only changed files under a scan id and never call
Store.finish_scan (which would forget every path the scan did not see).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dedupd.index.db import from_s64, to_s64
from dedupd.index.store import BATCH, IndexedFile, Store, chunks, group_rows

Key = tuple[int, int]


def under(path: bytes, roots: Sequence[bytes]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def _range(store: Store, roots: Sequence[bytes], col: str = "path"
           ) -> tuple[str, list[bytes]]:
    """SQL condition (and its parameters): col strictly below one of roots, as a
    bytewise range (no LIKE escaping: '0' sorts right after '/')."""
    p = store.db.p
    conds, params = [], []
    for root in roots:
        conds.append(f"({col} >= {p} AND {col} < {p})")
        params += [root.rstrip(b"/") + b"/", root.rstrip(b"/") + b"0"]
    return "(" + " OR ".join(conds) + ")", params


def finish_incremental(store: Store, scan_id: int) -> None:
    p = store.db.p
    with store.db.tx() as cur:
        cur.execute(f"UPDATE scans SET finished = {p} WHERE id = {p}", (time.time(), scan_id))


def paths_below(store: Store, root: bytes) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(path_key, path, dev, ino) of every indexed path below root, in pages."""
    cond, params = _range(store, [root])
    p = store.db.p
    last = b""
    while True:  # keyset pages: no read stays open while the caller writes
        rows = store.db.rows(f"SELECT path_key, path, dev, ino FROM paths WHERE {cond} "
                             f"AND path_key > {p} ORDER BY path_key LIMIT 5000",
                             (*params, last))
        for k, path, d, n in rows:
            yield bytes(k), bytes(path), from_s64(d), from_s64(n)
        if len(rows) < 5000:
            return
        last = bytes(rows[-1][0])


def forget_paths(store: Store, path_keys: Sequence[bytes]) -> int:
    """Drop these paths, then inodes left without any path. Returns paths dropped."""
    if not path_keys:
        return 0
    with store.db.tx() as cur:
        for part in chunks(list(path_keys), BATCH):
            cur.execute(f"DELETE FROM paths WHERE path_key IN ({store.db.marks(len(part))})",
                        part)
        store.drop_orphans(cur)
    return len(path_keys)


def _inodes_below(store: Store, roots: Sequence[bytes], min_size: int = 0
                  ) -> tuple[str, list[Any]]:
    """A subquery: the distinct inodes (dev, ino, size, head, full) with a path under roots."""
    cond, params = _range(store, roots, "p.path")
    sql = ('SELECT DISTINCT i.dev, i.ino, i.size, i.head, i."full" FROM inodes i '
           f"JOIN paths p ON p.dev = i.dev AND p.ino = i.ino WHERE {cond} "
           f"AND i.size >= {store.db.p}")
    return sql, [*params, min_size]


def pending_sizes(store: Store, roots: Sequence[bytes], min_size: int) -> list[int]:
    """Sizes with 2+ inodes under roots where some inode was never read (left pending).

    One query: a volume of unique sizes (photos) must not cost one query per size.
    """
    inner, params = _inodes_below(store, roots, max(min_size, 1))
    sql = (f"SELECT size FROM ({inner}) u GROUP BY size "
           "HAVING count(*) > 1 AND sum(CASE WHEN head IS NULL THEN 1 ELSE 0 END) > 0 "
           "ORDER BY size")
    return [int(r[0]) for r in store.db.rows(sql, params)]


def files_of_sizes(store: Store, sizes: Sequence[int],
                   roots: Sequence[bytes]) -> Iterator[list[IndexedFile]]:
    """Like Store.files_of_sizes but over the whole index (any scan), limited to roots."""
    for part in chunks(sorted(set(sizes)), 200):
        rows = [r for r in store.db.rows(
            'SELECT i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns, i.head, i."full", '
            "i.unstable, p.path FROM inodes i JOIN paths p ON p.dev = i.dev AND p.ino = i.ino "
            f"WHERE i.size IN ({store.db.marks(len(part))}) "
            "ORDER BY i.size, i.dev, i.ino, p.path", part) if under(bytes(r[8]), roots)]
        names: dict[tuple[int, int], list[bytes]] = {}
        inodes = []
        for r in rows:  # ordered by inode then path: one inode row, all its names
            if (r[0], r[1]) not in names:
                names[(r[0], r[1])] = []
                inodes.append(tuple(r[:8]))
            names[(r[0], r[1])].append(bytes(r[8]))
        yield from group_rows(inodes, names)


# --- group state ---

def mark_done(store: Store, rows: Sequence[tuple[Key, bytes, Key, int]]) -> None:
    """Record (key, full, ref_key, bytes) as confirmed shared with the reference."""
    if not rows:
        return
    now = time.time()
    vals = [(to_s64(k[0]), to_s64(k[1]), full, to_s64(r[0]), to_s64(r[1]), n, now)
            for k, full, r, n in rows]
    with store.db.tx() as cur:
        cur.executemany(
            f'INSERT INTO extent_done (dev, ino, "full", ref_dev, ref_ino, bytes, at) '
            f"VALUES ({store.db.marks(7)}) ON CONFLICT (dev, ino) DO UPDATE SET "
            '"full" = excluded."full", ref_dev = excluded.ref_dev, '
            "ref_ino = excluded.ref_ino, bytes = excluded.bytes, at = excluded.at", vals)


def set_refs(store: Store, refs: Sequence[tuple[int, bytes, Key]]) -> None:
    """Remember (size, full) -> reference key, replacing an older choice."""
    if not refs:
        return
    rows = [(size, full, to_s64(k[0]), to_s64(k[1])) for size, full, k in refs]
    with store.db.tx() as cur:
        cur.executemany(
            f'INSERT INTO extent_refs (size, "full", dev, ino) VALUES ({store.db.marks(4)}) '
            'ON CONFLICT (size, "full") DO UPDATE SET dev = excluded.dev, ino = excluded.ino',
            rows)


def group_state(store: Store, size: int, full: bytes, keys: Iterable[Key]
                ) -> tuple[Key | None, dict[Key, tuple[bytes, Key]]]:
    """(remembered reference, done rows of keys) in one round trip to the index."""
    p = store.db.p
    by_dev: dict[int, list[int]] = {}
    for a, b in keys:
        by_dev.setdefault(to_s64(a), []).append(to_s64(b))
    done: dict[Key, tuple[bytes, Key]] = {}
    r = store.db.rows(f'SELECT dev, ino FROM extent_refs WHERE size = {p} AND "full" = {p}',
                      (size, full))
    for dev, inos in by_dev.items():
        for part in chunks(inos, BATCH):
            for dv, n, f, rd, rn in store.db.rows(
                    f'SELECT dev, ino, "full", ref_dev, ref_ino FROM extent_done '
                    f"WHERE dev = {p} AND ino IN ({store.db.marks(len(part))})", (dev, *part)):
                done[(from_s64(dv), from_s64(n))] = (bytes(f), (from_s64(rd), from_s64(rn)))
    ref = None if not r else (from_s64(r[0][0]), from_s64(r[0][1]))
    return ref, done


def has_group_state(store: Store) -> bool:
    """Whether any reference or done mark is stored (none on a volume's first pass)."""
    return any(store.db.rows(f"SELECT 1 FROM {t} LIMIT 1")
               for t in ("extent_refs", "extent_done"))


def reset_done_before(store: Store, when: float) -> int:
    """Forget 'done' marks older than `when` so those files are verified again."""
    with store.db.tx() as cur:
        cur.execute(f"DELETE FROM extent_done WHERE at < {store.db.p}", (when,))
        return max(int(cur.rowcount or 0), 0)


def maintain(store: Store) -> None:
    """VACUUM/ANALYZE (SQLite) or ANALYZE (PostgreSQL; autovacuum does the rest).
    Outside any transaction: VACUUM refuses to run inside one."""
    cur = store.db.conn().cursor()
    try:
        if store.dialect == "sqlite":
            cur.execute("VACUUM")
        cur.execute("ANALYZE")
    finally:
        cur.close()


# --- stats ---

def volume_stats(store: Store, root: bytes) -> dict[str, int]:
    """Counts over the inodes with a path below root."""
    inner, params = _inodes_below(store, [root])

    def one(sql: str, extra: Sequence[Any] = ()) -> Any:
        return store.db.rows(sql, [*params, *extra])[0]

    files, hashed = one(f'SELECT count(*), count("full") FROM ({inner}) u')
    groups, dup_bytes = one(f'SELECT count(*), coalesce(sum(size * (n - 1)), 0) FROM '
                            f'(SELECT size, "full", count(*) AS n FROM ({inner}) u '
                            'WHERE "full" IS NOT NULL GROUP BY size, "full" '
                            "HAVING count(*) > 1) g")
    done = one(f"SELECT count(*), coalesce(sum(d.bytes), 0) FROM extent_done d "
               f"JOIN ({inner}) u ON u.dev = d.dev AND u.ino = d.ino")
    cond, rparams = _range(store, [root])
    paths = store.db.rows(f"SELECT count(*) FROM paths WHERE {cond}", rparams)[0][0]
    return {"files_indexed": int(files), "paths_indexed": int(paths), "hashed": int(hashed),
            "duplicate_groups": int(groups), "duplicate_bytes": int(dup_bytes),
            "files_deduped": int(done[0]), "bytes_deduped": int(done[1])}


def full_hash(store: Store, key: Key) -> bytes | None:
    """The stored full hash of an inode (the hasher's groups may not carry it)."""
    p = store.db.p
    rows = store.db.rows(f'SELECT "full" FROM inodes WHERE dev = {p} AND ino = {p}',
                         (to_s64(key[0]), to_s64(key[1])))
    return None if not rows or rows[0][0] is None else bytes(rows[0][0])
