"""The scan's hot path in plain SQL: recording a batch of walk results.

Every statement runs on a DB-API cursor inside Db.tx(); the SQL is the common
subset of SQLite >= 3.35 and PostgreSQL (ON CONFLICT ... DO UPDATE, excluded.*,
RETURNING). Inodes are keyed by (filesystem id, signed ino), names by
(directory id, own name).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

from dedupd.index.db import Db

INODE_COLS = ("fs", "ino", "size", "mtime_ns", "ctime_delta", "head", "full", "seen",
              "unstable")
CTIME = "(mtime_ns + ctime_delta)"  # ctime_ns of an inodes row
# A file of up to this size is read whole in one read and grouped by its full hash
# alone (dedupd.hashing.rule: "small"), so once its full hash is known its head hash
# is never used: it is not stored (8 bytes a file; most files of real trees are
# small). Must not exceed dedupd.hashing.read.WHOLE_READ (a unit test checks).
HEADLESS_MAX = 128 * 1024
# quoted: "full" is a reserved word in PostgreSQL
_INODES = "INSERT INTO inodes (" + ", ".join(f'"{k}"' for k in INODE_COLS) + ")"
_INODES_TAIL = " ON CONFLICT (fs, ino) DO UPDATE SET " + ", ".join(
    f'"{k}" = excluded."{k}"' for k in INODE_COLS[2:])


def _all(cur: Any, sql: str, params: Sequence[Any]) -> list[Any]:
    cur.execute(sql, params)
    return list(cur.fetchall())


ROWS_PER_INSERT = 200  # rows of one multi-row INSERT (SQLite; 1,800 parameters at most)


class Bulk:
    def __init__(self, db: Db) -> None:
        self.p = db.p
        self._in = db.marks
        self._sqlite = db.dialect == "sqlite"
        self._sql: dict[tuple[str, int], str] = {}  # (statement, rows) -> its SQL
        # SQLite keeps a statement journal for an UPDATE of a table with triggers
        # (inodes: the hash_epoch ones), to undo that one statement when a constraint
        # fails: each row's page already dirty in the transaction is copied there (a
        # temporary file; 175 MB for the hashes of a first import's copies, written in
        # transactions of several flushes). OR FAIL needs none, and is the same here:
        # no constraint of these columns or of the triggers' can fail, and a failing
        # statement fails its whole transaction anyway (Db.tx rolls it back).
        self._or_fail = "OR FAIL " if self._sqlite else ""

    def _insert(self, cur: Any, head: str, tail: str, ncols: int,
                rows: Sequence[Sequence[Any]]) -> None:
        """INSERT `head` VALUES (...) `tail` of every row. SQLite takes them
        ROWS_PER_INSERT to a statement (one statement step for many rows: a quarter
        less CPU than one per row, executemany's); PostgreSQL by executemany (an
        ON CONFLICT DO UPDATE may not meet one key twice in a statement there)."""
        if not self._sqlite:
            cur.executemany(f"{head} VALUES ({self._in(ncols)}){tail}", rows)
            return
        one = f"({self._in(ncols)})"
        for i in range(0, len(rows), ROWS_PER_INSERT):
            part = rows[i:i + ROWS_PER_INSERT]
            sql = self._sql.get((head, len(part)))
            if sql is None:
                sql = self._sql[(head, len(part))] = \
                    f"{head} VALUES {', '.join([one] * len(part))}{tail}"
            cur.execute(sql, list(chain.from_iterable(part)))

    def stat_rows(self, cur: Any, fs: int, inos: Sequence[int]) -> list[Any]:
        """(ino, size, mtime_ns, ctime_ns, unstable, head, full) of the known inodes
        among inos."""
        sql = (f'SELECT ino, size, mtime_ns, {CTIME}, unstable, head, "full" FROM inodes '
               f"WHERE fs = {self.p} AND ino IN ({self._in(len(inos))})")
        return _all(cur, sql, (fs, *inos))

    def entry_rows(self, cur: Any, did: int, fs: int, names: Sequence[bytes]) -> list[Any]:
        """(name, ino, size, mtime_ns, ctime_ns, unstable, head, full) of the known
        names among `names` in directory did; the inode columns are NULL when the
        name's inode has no row on filesystem fs."""
        sql = ("SELECT e.name, e.ino, i.size, i.mtime_ns, i.mtime_ns + i.ctime_delta, "
               "i.unstable, i.head, "
               'i."full" FROM entries e LEFT JOIN inodes i ON i.fs = '
               f"{self.p} AND i.ino = e.ino WHERE e.dir = {self.p} "
               f"AND e.name IN ({self._in(len(names))})")
        return _all(cur, sql, (fs, did, *names))

    def names_of_inodes(self, cur: Any, inos: Sequence[int]) -> list[Any]:
        """(fs, ino, dir, name, seen) of every name of an inode number among inos
        (on any filesystem: the caller keeps the keys it asked for). One pass over
        the names (no index by inode: it would cost a quarter of the index)."""
        sql = ("SELECT d.fs, e.ino, e.dir, e.name, e.seen FROM entries e "
               f"JOIN directories d ON d.id = e.dir WHERE e.ino IN ({self._in(len(inos))})")
        return [(int(r[0]), r[1], int(r[2]), bytes(r[3]), r[4]) for r in _all(cur, sql, inos)]

    def touch_inodes(self, cur: Any, scan_id: int, fs: int, inos: Sequence[int]) -> None:
        sql = (f"UPDATE inodes SET seen = {self.p} WHERE fs = {self.p} "
               f"AND ino IN ({self._in(len(inos))})")
        cur.execute(sql, (scan_id, fs, *inos))

    def touch_entries(self, cur: Any, scan_id: int, did: int, names: Sequence[bytes]) -> None:
        sql = (f"UPDATE entries SET seen = {self.p} WHERE dir = {self.p} "
               f"AND name IN ({self._in(len(names))})")
        cur.execute(sql, (scan_id, did, *names))

    def upsert_inodes(self, cur: Any, rows: Sequence[Sequence[Any]]) -> None:
        """rows: INODE_COLS each, one row a key."""
        self._insert(cur, _INODES, _INODES_TAIL, len(INODE_COLS), rows)

    def upsert_entries(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        """rows: (dir, name, ino, seen), one row a (dir, name)."""
        self._insert(cur, "INSERT INTO entries (dir, name, ino, seen)",
                     " ON CONFLICT (dir, name) DO UPDATE SET ino = excluded.ino, "
                     "seen = excluded.seen", 4, rows)

    def set_digests(self, cur: Any, rows: Sequence[tuple[int, bytes]]) -> None:
        """rows: (directory id, listing digest). SQLite takes them ROWS_PER_INSERT to
        an UPDATE ... FROM VALUES (one statement step for many rows)."""
        if not self._sqlite:
            cur.executemany(f"UPDATE directories SET digest = {self.p} WHERE id = {self.p}",
                            [(g, d) for d, g in rows])
            return
        for i in range(0, len(rows), ROWS_PER_INSERT):
            part = rows[i:i + ROWS_PER_INSERT]
            cur.execute("UPDATE directories SET digest = v.column2 FROM (VALUES "
                        f"{', '.join(['(?, ?)'] * len(part))}) AS v "
                        "WHERE directories.id = v.column1", [x for r in part for x in r])

    def set_ctimes(self, cur: Any, rows: list[tuple[Any, ...]]) -> None:
        """rows: (new ctime_ns, fs, ino, size, mtime_ns, old ctime_ns); only a row still
        at the old stat takes the new ctime."""
        sql = (f"UPDATE inodes SET ctime_delta = {self.p} - mtime_ns WHERE fs = {self.p} "
               f"AND ino = {self.p} AND size = {self.p} AND mtime_ns = {self.p} "
               f"AND {CTIME} = {self.p}")
        cur.executemany(sql, rows)

    def save_hashes(self, cur: Any, rows: list[tuple[Any, ...]], same_stat: bool = False
                    ) -> None:
        """rows: (head, full, fs, ino), plus (size, mtime_ns, ctime_ns) with same_stat:
        then only a row still at that stat takes them. A hashed inode is stable again.
        The head of a file of up to HEADLESS_MAX bytes is dropped once its full hash
        is known."""
        head = f"CASE WHEN size > {HEADLESS_MAX} THEN CAST({self.p} AS BIGINT) END"
        for whole, part in ((True, [r for r in rows if r[1] is not None]),
                            (False, [r for r in rows if r[1] is None])):
            sql = (f'UPDATE {self._or_fail}inodes SET head = {head if whole else self.p}, '
                   f'"full" = {self.p}, unstable = 0 WHERE fs = {self.p} AND ino = {self.p}')
            if same_stat:
                sql += f" AND size = {self.p} AND mtime_ns = {self.p} AND {CTIME} = {self.p}"
            if part:
                cur.executemany(sql, part)
