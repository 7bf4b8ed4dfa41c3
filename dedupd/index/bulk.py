"""The scan's hot path in plain SQL: recording a batch of walk results.

Every statement runs on a DB-API cursor inside Db.tx(); the SQL is the common
subset of SQLite >= 3.24 and PostgreSQL (ON CONFLICT ... DO UPDATE, excluded.*).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dedupd.index.db import Db

INODE_COLS = ("dev", "ino", "size", "mtime_ns", "ctime_ns", "mode", "uid", "gid", "nlink",
              "head", "full", "seen", "changed_at", "unstable")


def _all(cur: Any, sql: str, params: Sequence[Any]) -> list[Any]:
    cur.execute(sql, params)
    return list(cur.fetchall())


class Bulk:
    def __init__(self, db: Db) -> None:
        self.p = db.p
        self._in = db.marks

    def stat_rows(self, cur: Any, dev: int, inos: Sequence[int]) -> list[Any]:
        """(ino, size, mtime_ns, ctime_ns, unstable, head, full) of the known inodes
        among inos."""
        sql = (f'SELECT ino, size, mtime_ns, ctime_ns, unstable, head, "full" FROM inodes '
               f"WHERE dev = {self.p} AND ino IN ({self._in(len(inos))})")
        return _all(cur, sql, (dev, *inos))

    def path_rows(self, cur: Any, keys: Sequence[bytes]) -> list[Any]:
        """(path_key, dev, ino, size, mtime_ns, ctime_ns, unstable, head, full) of
        known paths; the inode columns are NULL when the path's inode has no row."""
        sql = ("SELECT p.path_key, p.dev, p.ino, i.size, i.mtime_ns, i.ctime_ns, i.unstable, "
               'i.head, i."full" '
               "FROM paths p LEFT JOIN inodes i ON i.dev = p.dev AND i.ino = p.ino "
               f"WHERE p.path_key IN ({self._in(len(keys))})")
        return _all(cur, sql, tuple(keys))

    def paths_of_inodes(self, cur: Any, scan_id: int, dev: int,
                        inos: Sequence[int]) -> list[Any]:
        """(ino, path) of the given inodes' names seen in this scan.

        `seen` is filtered here, not in SQL: given the choice SQLite walks the
        seen index (every path of the scan) instead of looking up the inodes.
        """
        sql = (f"SELECT ino, path, seen FROM paths WHERE dev = {self.p} "
               f"AND ino IN ({self._in(len(inos))})")
        return [(r[0], bytes(r[1])) for r in _all(cur, sql, (dev, *inos)) if r[2] == scan_id]

    def touch_inodes(self, cur: Any, scan_id: int, dev: int, inos: Sequence[int]) -> None:
        sql = (f"UPDATE inodes SET seen = {self.p} WHERE dev = {self.p} "
               f"AND ino IN ({self._in(len(inos))})")
        cur.execute(sql, (scan_id, dev, *inos))

    def touch_paths(self, cur: Any, scan_id: int, keys: Sequence[bytes]) -> None:
        sql = f"UPDATE paths SET seen = {self.p} WHERE path_key IN ({self._in(len(keys))})"
        cur.execute(sql, (scan_id, *keys))

    def upsert_inodes(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        # quoted: "full" is a reserved word in PostgreSQL
        sets = ", ".join(f'"{k}" = excluded."{k}"' for k in INODE_COLS[2:])
        cols = ", ".join(f'"{k}"' for k in INODE_COLS)
        sql = (f"INSERT INTO inodes ({cols}) "
               f"VALUES ({self._in(len(INODE_COLS))}) "
               f"ON CONFLICT (dev, ino) DO UPDATE SET {sets}")
        cur.executemany(sql, rows)

    def upsert_paths(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        sql = (f"INSERT INTO paths (path_key, path, dev, ino, seen) VALUES ({self._in(5)}) "
               "ON CONFLICT (path_key) DO UPDATE SET dev = excluded.dev, "
               "ino = excluded.ino, seen = excluded.seen")
        cur.executemany(sql, rows)

    def set_ctimes(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        """rows: (new ctime_ns, dev, ino, size, mtime_ns, old ctime_ns); only a row still
        at the old stat takes the new ctime."""
        sql = (f"UPDATE inodes SET ctime_ns = {self.p} WHERE dev = {self.p} AND ino = {self.p} "
               f"AND size = {self.p} AND mtime_ns = {self.p} AND ctime_ns = {self.p}")
        cur.executemany(sql, rows)

    def save_hashes(self, cur: Any, rows: list[tuple[Any, ...]], same_stat: bool = False
                    ) -> None:
        """rows: (head, full, dev, ino), plus (size, mtime_ns, ctime_ns) with same_stat:
        then only a row still at that stat takes them. A hashed inode is stable again."""
        sql = (f'UPDATE inodes SET head = {self.p}, "full" = {self.p}, unstable = 0 '
               f"WHERE dev = {self.p} AND ino = {self.p}")
        if same_stat:
            sql += f" AND size = {self.p} AND mtime_ns = {self.p} AND ctime_ns = {self.p}"
        cur.executemany(sql, rows)
