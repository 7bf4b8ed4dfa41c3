"""Index queries for extent-dedupe volumes: incremental scans, group state, stats.

Functions take a Store; nothing here changes the foundation's tables' meaning.
Keys are (current st_dev, ino) in and out; rows hold filesystem ids (Store.key_of,
Store.dev_of translate). "Under roots" is a subtree of the directories table.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dedupd.index.db import from_s64
from dedupd.index.dirs import join, subtree_sql
from dedupd.index.record import drop_empty
from dedupd.index.store import BATCH, IndexedFile, Store, chunks, group_rows

Key = tuple[int, int]


def under(path: bytes, roots: Sequence[bytes]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def _subtree(store: Store, roots: Sequence[bytes]) -> tuple[str, list[int]]:
    """WITH clause of sub(id, fs): the indexed directories at or below roots."""
    return subtree_sql(store.db, [d for d in (store.dirs.find(r) for r in roots)
                                  if d is not None])


def finish_incremental(store: Store, scan_id: int, roots: Sequence[bytes],
                       gone: Sequence[bytes], gone_dirs: Sequence[bytes],
                       sizes: Iterable[int] | None, min_size: int
                       ) -> tuple[int, Iterator[list[IndexedFile]]]:
    """Store.finish_incremental (the contract is documented there)."""
    n = store.forget_paths(gone) if gone else 0
    # Below a removed or renamed-away directory, what this scan recorded (a new
    # directory of the same name) stays; the rest goes.
    dead_parents = store.dirs.subtree_parents(gone_dirs)
    dead = [d for d, _fs, _parent in dead_parents]
    p = store.db.p
    with store.db.tx() as cur:
        for part in chunks(dead, 500):
            marks = store.db.marks(len(part))
            cur.execute(f"DELETE FROM entries WHERE seen < {p} AND dir IN ({marks})",
                        (scan_id, *part))
            n += max(int(cur.rowcount or 0), 0)
            cur.execute(f"UPDATE directories SET digest = NULL WHERE id IN ({marks})", part)
        if dead:
            drop_empty(store, cur, dead, {d: parent for d, _fs, parent in dead_parents})
            store.drop_orphans(cur)
        cur.execute(f"UPDATE scans SET finished = {p} WHERE id = {p}", (time.time(), scan_id))
    if sizes is None:
        inner, params = _inodes_below(store, roots, max(min_size, 1))
        sizes = [int(r[0]) for r in store.db.rows(
            f"SELECT size FROM {inner} u GROUP BY size HAVING count(*) > 1 ORDER BY size",
            params)]
    return n, files_of_sizes(store, sorted(set(sizes)), roots)


def _inodes_below(store: Store, roots: Sequence[bytes], min_size: int = 0
                  ) -> tuple[str, list[Any]]:
    """A subquery: the distinct inodes (fs, ino, size, head, full) named under roots."""
    cte, params = _subtree(store, roots)
    sql = (f'({cte}SELECT DISTINCT i.fs, i.ino, i.size, i.head, i."full" FROM sub '
           "JOIN entries e ON e.dir = sub.id JOIN inodes i ON i.fs = sub.fs AND i.ino = e.ino "
           f"WHERE i.size >= {store.db.p})")
    return sql, [*params, min_size]


def pending_sizes(store: Store, roots: Sequence[bytes], min_size: int) -> list[int]:
    """Sizes with 2+ inodes under roots where some inode was never read (left pending:
    no hash at all; a small file keeps only its full hash).

    One query: a volume of unique sizes (photos) must not cost one query per size.
    """
    inner, params = _inodes_below(store, roots, max(min_size, 1))
    sql = (f"SELECT size FROM {inner} u GROUP BY size "
           "HAVING count(*) > 1 AND "
           'sum(CASE WHEN head IS NULL AND "full" IS NULL THEN 1 ELSE 0 END) > 0 '
           "ORDER BY size")
    return [int(r[0]) for r in store.db.rows(sql, params)]


def files_of_sizes(store: Store, sizes: Sequence[int],
                   roots: Sequence[bytes]) -> Iterator[list[IndexedFile]]:
    """Like Store.files_of_sizes but over the whole index (any scan), limited to roots."""
    cte, ids = _subtree(store, roots)
    for part in chunks(sorted(set(sizes)), 200):
        rows = store.db.rows(
            f'{cte}SELECT i.fs, i.ino, i.size, i.mtime_ns, i.mtime_ns + i.ctime_delta, i.head, '
            'i."full", '
            "i.unstable, e.dir, e.name FROM sub JOIN entries e ON e.dir = sub.id "
            "JOIN inodes i ON i.fs = sub.fs AND i.ino = e.ino "
            f"WHERE i.size IN ({store.db.marks(len(part))}) "
            "ORDER BY i.size, i.fs, i.ino", [*ids, *part])
        dirs = store.dirs.paths({int(r[8]) for r in rows})
        names: dict[tuple[int, int], list[bytes]] = {}
        inodes = []
        for r in rows:  # ordered by inode: one inode row, all its names
            if (r[0], r[1]) not in names:
                names[(r[0], r[1])] = []
                inodes.append(tuple(r[:8]))
            if r[8] in dirs:
                names[(r[0], r[1])].append(join(dirs[r[8]], bytes(r[9])))
        for v in names.values():
            v.sort()
        yield from group_rows(inodes, names, store.dev_of)


# --- group state ---

def mark_done(store: Store, rows: Sequence[tuple[Key, bytes, Key, int]]) -> None:
    """Record (key, full, ref_key, bytes) as confirmed shared with the reference."""
    now = time.time()
    vals = []
    for k, full, r, n in rows:
        a, b = store.key_of(*k), store.key_of(*r)
        if a is not None and b is not None:
            vals.append((*a, full, *b, n, now))
    if not vals:
        return
    with store.db.tx() as cur:
        cur.executemany(
            f'INSERT INTO extent_done (fs, ino, "full", ref_fs, ref_ino, bytes, at) '
            f"VALUES ({store.db.marks(7)}) ON CONFLICT (fs, ino) DO UPDATE SET "
            '"full" = excluded."full", ref_fs = excluded.ref_fs, '
            "ref_ino = excluded.ref_ino, bytes = excluded.bytes, at = excluded.at", vals)


def set_refs(store: Store, refs: Sequence[tuple[int, bytes, Key]]) -> None:
    """Remember (size, full) -> reference key, replacing an older choice."""
    rows = []
    for size, full, k in refs:
        key = store.key_of(*k)
        if key is not None:
            rows.append((store.host, size, full, *key))
    if not rows:
        return
    with store.db.tx() as cur:
        cur.executemany(
            f'INSERT INTO extent_refs (host, size, "full", fs, ino) VALUES '
            f'({store.db.marks(5)}) ON CONFLICT (host, size, "full") DO UPDATE SET '
            "fs = excluded.fs, ino = excluded.ino", rows)


def _dev_key(store: Store, fs: int, ino: int) -> Key | None:
    dev = store.dev_of(fs)
    return None if dev is None else (dev, from_s64(ino))


def group_state(store: Store, size: int, full: bytes, keys: Iterable[Key]
                ) -> tuple[Key | None, dict[Key, tuple[bytes, Key]]]:
    """(remembered reference, done rows of keys) in one round trip to the index.
    Keys are (current st_dev, ino); a reference on a filesystem not mounted now is
    no reference."""
    p = store.db.p
    by_fs: dict[int, list[int]] = {}
    for a, b in keys:
        k = store.key_of(a, b)
        if k is not None:
            by_fs.setdefault(k[0], []).append(k[1])
    done: dict[Key, tuple[bytes, Key]] = {}
    r = store.db.rows(f'SELECT fs, ino FROM extent_refs WHERE host = {p} AND size = {p} '
                      f'AND "full" = {p}', (store.host, size, full))
    for fs, inos in by_fs.items():
        for part in chunks(inos, BATCH):
            for f, n, h, rf, rn in store.db.rows(
                    f'SELECT fs, ino, "full", ref_fs, ref_ino FROM extent_done '
                    f"WHERE fs = {p} AND ino IN ({store.db.marks(len(part))})", (fs, *part)):
                k, ref = _dev_key(store, f, n), _dev_key(store, rf, rn)
                if k is not None and ref is not None:
                    done[k] = (bytes(h), ref)
    return (None if not r else _dev_key(store, r[0][0], r[0][1])), done


def has_group_state(store: Store) -> bool:
    """Whether any reference or done mark of this host is stored (none on a first pass)."""
    p = store.db.p
    return bool(store.db.rows(f"SELECT 1 FROM extent_refs WHERE host = {p} LIMIT 1",
                              (store.host,)) or store.db.rows(
        f"SELECT 1 FROM extent_done d JOIN filesystems f ON f.id = d.fs WHERE f.host = {p} "
        "LIMIT 1", (store.host,)))


def reset_done_before(store: Store, when: float) -> int:
    """Forget this host's 'done' marks older than `when` so those files are verified
    again."""
    p = store.db.p
    with store.db.tx() as cur:
        cur.execute(f"DELETE FROM extent_done WHERE at < {p} AND fs IN "
                    f"(SELECT id FROM filesystems WHERE host = {p})", (when, store.host))
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
    """Counts over the inodes with a name below root."""
    inner, params = _inodes_below(store, [root])

    def one(sql: str, extra: Sequence[Any] = ()) -> Any:
        return store.db.rows(sql, [*params, *extra])[0]

    files, hashed = one(f'SELECT count(*), count("full") FROM {inner} u')
    groups, dup_bytes = one(f'SELECT count(*), coalesce(sum(size * (n - 1)), 0) FROM '
                            f'(SELECT size, "full", count(*) AS n FROM {inner} u '
                            'WHERE "full" IS NOT NULL GROUP BY size, "full" '
                            "HAVING count(*) > 1) g")
    done = one(f"SELECT count(*), coalesce(sum(d.bytes), 0) FROM extent_done d "
               f"JOIN {inner} u ON u.fs = d.fs AND u.ino = d.ino")
    cte, ids = _subtree(store, [root])
    paths = store.db.rows(f"{cte}SELECT count(*) FROM sub JOIN entries e ON e.dir = sub.id",
                          ids)[0][0]
    return {"files_indexed": int(files), "paths_indexed": int(paths), "hashed": int(hashed),
            "duplicate_groups": int(groups), "duplicate_bytes": int(dup_bytes),
            "files_deduped": int(done[0]), "bytes_deduped": int(done[1])}


def full_hash(store: Store, key: Key) -> bytes | None:
    """The stored full hash of an inode (the hasher's groups may not carry it)."""
    k = store.key_of(*key)
    if k is None:
        return None
    p = store.db.p
    rows = store.db.rows(f'SELECT "full" FROM inodes WHERE fs = {p} AND ino = {p}', k)
    return None if not rows or rows[0][0] is None else bytes(rows[0][0])
