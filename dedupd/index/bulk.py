"""The scan's hot path in plain SQL: recording a batch of walk results.

SQLAlchemy's statement compilation costs more per row than SQLite's own
executemany, and a rescan touches every file, so this path talks to the driver
directly (exec_driver_sql). The SQL is the common subset of SQLite >= 3.24 and
PostgreSQL (ON CONFLICT ... DO UPDATE, excluded.*); only the placeholder differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

INODE_COLS = ("dev", "ino", "size", "mtime_ns", "ctime_ns", "mode", "uid", "gid", "nlink",
              "head", "full", "seen", "changed_at", "unstable")


class Bulk:
    def __init__(self, dialect: str) -> None:
        self.p = "%s" if dialect == "postgresql" else "?"

    def _in(self, n: int) -> str:
        return ",".join([self.p] * n)

    def stat_rows(self, c: Connection, dev: int, inos: Sequence[int]) -> list[Any]:
        """(ino, size, mtime_ns, ctime_ns, unstable) of the known inodes among inos."""
        sql = (f"SELECT ino, size, mtime_ns, ctime_ns, unstable FROM inodes "
               f"WHERE dev = {self.p} AND ino IN ({self._in(len(inos))})")
        return list(c.exec_driver_sql(sql, (dev, *inos)).fetchall())

    def path_rows(self, c: Connection, keys: Sequence[bytes]) -> list[Any]:
        """(path_key, dev, ino, size, mtime_ns, ctime_ns, unstable) of known paths;
        the inode columns are NULL when the path's inode has no row."""
        sql = ("SELECT p.path_key, p.dev, p.ino, i.size, i.mtime_ns, i.ctime_ns, i.unstable "
               "FROM paths p LEFT JOIN inodes i ON i.dev = p.dev AND i.ino = p.ino "
               f"WHERE p.path_key IN ({self._in(len(keys))})")
        return list(c.exec_driver_sql(sql, tuple(keys)).fetchall())

    def paths_of_inodes(self, c: Connection, scan_id: int, dev: int,
                        inos: Sequence[int]) -> list[Any]:
        """(ino, path) of the given inodes' names seen in this scan.

        `seen` is filtered here, not in SQL: given the choice SQLite walks the
        seen index (every path of the scan) instead of looking up the inodes.
        """
        sql = (f"SELECT ino, path, seen FROM paths WHERE dev = {self.p} "
               f"AND ino IN ({self._in(len(inos))})")
        rows = c.exec_driver_sql(sql, (dev, *inos)).fetchall()
        return [(r[0], r[1]) for r in rows if r[2] == scan_id]

    def touch_inodes(self, c: Connection, scan_id: int, dev: int, inos: Sequence[int]) -> None:
        sql = (f"UPDATE inodes SET seen = {self.p} WHERE dev = {self.p} "
               f"AND ino IN ({self._in(len(inos))})")
        c.exec_driver_sql(sql, (scan_id, dev, *inos))

    def touch_paths(self, c: Connection, scan_id: int, keys: Sequence[bytes]) -> None:
        sql = f"UPDATE paths SET seen = {self.p} WHERE path_key IN ({self._in(len(keys))})"
        c.exec_driver_sql(sql, (scan_id, *keys))

    def upsert_inodes(self, c: Connection, rows: list[tuple[Any, ...]]) -> None:
        # quoted: "full" is a reserved word in PostgreSQL
        sets = ", ".join(f'"{k}" = excluded."{k}"' for k in INODE_COLS[2:])
        cols = ", ".join(f'"{k}"' for k in INODE_COLS)
        sql = (f"INSERT INTO inodes ({cols}) "
               f"VALUES ({self._in(len(INODE_COLS))}) "
               f"ON CONFLICT (dev, ino) DO UPDATE SET {sets}")
        c.exec_driver_sql(sql, rows)

    def upsert_paths(self, c: Connection, rows: list[tuple[Any, ...]]) -> None:
        sql = (f"INSERT INTO paths (path_key, path, dev, ino, seen) VALUES ({self._in(5)}) "
               "ON CONFLICT (path_key) DO UPDATE SET dev = excluded.dev, "
               "ino = excluded.ino, seen = excluded.seen")
        c.exec_driver_sql(sql, rows)
