"""Size-group queries of the index: the candidates a scan hashes, for a Store.

A mixin of Store (dedupd/index/store.py), split off by role: which inodes share a
size (and which of those may share content), with their names, read in pages so
no read transaction stays open while the caller writes hashes.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dedupd.index.db import Db
from dedupd.index.dirs import DirTree, join, split, subtree_sql
from dedupd.index.rows import IndexedFile, group_rows

if TYPE_CHECKING:
    from collections.abc import Callable

_tables = itertools.count()  # temporary table names, unique in the process


class SizeGroups:
    db: Db
    dirs: DirTree
    dialect: str
    dev_of: Callable[..., int | None]

    def files_of_sizes(self, scan_id: int, sizes: Sequence[int]) -> Iterator[list[IndexedFile]]:
        """The size groups of this scan (see size_groups) of the given sizes only."""
        want = set(sizes)
        if want:
            yield from (g for g in self.size_groups(scan_id, min(want)) if g[0].size in want)

    def candidate_groups(self, scan_id: int, min_size: int) -> Iterator[list[IndexedFile]]:
        """One list per candidate size (ascending): the inodes of that size seen in
        this scan, when 2+ distinct inodes share it."""
        return self.size_groups(scan_id, max(min_size, 1), min_count=2)

    def size_groups(self, scan_id: int, min_size: int = 0, min_count: int = 1,
                    rows_per_query: int = 5000) -> Iterator[list[IndexedFile]]:
        """One list per size (ascending) of the inodes seen in this scan, with their
        names seen in it, for sizes >= min_size held by at least min_count inodes.

        The names of the sizes wanted are gathered in one pass into a temporary
        table of this thread's connection (the index has no lookup by inode: it
        would cost a quarter of its size), then read in pages by size, so no read
        transaction stays open while the caller writes hashes (a long-lived SQLite
        reader would stop WAL checkpoints). Iterate it in one thread.
        """
        p = self.db.p
        return self._paged(
            "INSERT INTO {t} SELECT i.size, i.fs, i.ino, i.mtime_ns, "
            'i.mtime_ns + i.ctime_delta, i.head, i."full", i.unstable, e.dir, '
            "e.name FROM entries e JOIN directories d ON d.id = e.dir JOIN inodes i "
            f"ON i.fs = d.fs AND i.ino = e.ino WHERE e.seen = {p} AND i.seen = {p} "
            f"AND i.size IN (SELECT size FROM inodes WHERE seen = {p} AND size >= {p} "
            f"GROUP BY size HAVING count(*) >= {p})",
            (scan_id, scan_id, scan_id, min_size, max(min_count, 1)), min_size,
            rows_per_query)

    def groups_under(self, roots: Sequence[bytes], min_size: int
                     ) -> Iterator[list[IndexedFile]]:
        """Like candidate_groups, over every name the index has under roots (whatever
        scan saw it last; a root that is a file: its own name): what a scan that
        skipped unchanged directories hashes. A size whose every inode has its full
        hash comes only with the inodes that share one (what the hasher would keep
        of it)."""
        top = {r: self.dirs.find(r) for r in roots}
        cte, ids = subtree_sql(self.db, [d for d in top.values() if d is not None])
        files = [(d, name) for d, name in (self._entry_of(r) for r, i in top.items()
                                           if i is None) if d is not None]
        p, lo = self.db.p, max(min_size, 1)
        under = _UNDER + "".join(
            " UNION ALL " + _NAMED + " AND e.dir = {p} AND e.name = {p}" for _ in files)
        named = [x for d, name in files for x in (lo, d, name)]
        fss = self._filesystems_mostly_under(cte, ids, [d for d, _n in files])
        if fss is None:
            return self._paged(cte.rstrip() + ", u AS (" + under.replace("{p}", p)
                               + ") INSERT INTO {t} " + _EXACT,
                               (*ids, lo, *named), lo, 5000)
        # Most of the filesystems' directories are under roots (a whole-tree rescan):
        # the shared sizes and contents are found from the inode rows alone (one sort
        # of (size, hash), no join with the names), a superset of what is under
        # roots; the names under roots of those are then trimmed to the exact answer.
        fin = f"fs IN ({self.db.marks(len(fss))})"
        return self._paged(
            cte.rstrip() + ", g AS (SELECT size, count(*) = count(\"full\") AS hashed "
            f"FROM inodes WHERE {fin} AND size >= {p} GROUP BY size HAVING count(*) > 1 "
            'AND (count("full") < count(*) OR count(DISTINCT "full") < count("full"))), '
            f'q AS (SELECT size, "full" FROM inodes WHERE {fin} AND size IN (SELECT size '
            'FROM g WHERE hashed) GROUP BY size, "full" HAVING count(*) > 1), '
            "u AS (" + under.replace("{p}", p) + ") INSERT INTO {t} SELECT * FROM u WHERE "
            'size IN (SELECT size FROM g WHERE NOT hashed) OR (size, "full") IN (SELECT '
            'size, "full" FROM q)',
            (*ids, *fss, lo, *fss, lo, *named), lo, 5000, trim=_TRIM[self.dialect])

    def _entry_of(self, path: bytes) -> tuple[int | None, bytes]:
        """(directory id, name) of a file's path (None: its directory is not indexed)."""
        d, name = split(path)
        return self.dirs.find(d), name

    def _filesystems_mostly_under(self, cte: str, ids: Sequence[int], more: Sequence[int] = ()
                                  ) -> list[int] | None:
        """The filesystems of the subtree `cte` (and of the directories `more`) when it
        holds at least half of their directories (then a pass over their inode rows
        costs about what the subtree's names do), else None."""
        rows = self.db.rows(cte + "SELECT fs, count(*) FROM sub WHERE fs > 0 GROUP BY fs", ids)
        fss = {int(r[0]) for r in rows} | {f for f in map(self.dirs.fs_of, more) if f}
        if not rows:
            return None
        held = self.db.rows(f"SELECT count(*) FROM directories WHERE fs IN "
                            f"({self.db.marks(len(fss))})", sorted(fss))
        return sorted(fss) if 2 * sum(int(r[1]) for r in rows) >= int(held[0][0]) else None

    def _paged(self, fill: str, params: Sequence[Any], min_size: int, rows_per_query: int,
               trim: str = "") -> Iterator[list[IndexedFile]]:
        """Run `fill` (an INSERT INTO {t}) into a temporary table of candidate names,
        then `trim` (a DELETE FROM {t}, if any), then yield its size groups page by
        page (see size_groups)."""
        p = self.db.p
        t = f"sizes_{threading.get_ident() % 1000003}_{next(_tables)}"
        blob = "BLOB" if self.dialect == "sqlite" else "BYTEA"
        self.db.run(f"CREATE TEMPORARY TABLE {t} (size BIGINT, fs INTEGER, ino BIGINT, "
                    f'mtime_ns BIGINT, ctime_ns BIGINT, head BIGINT, "full" {blob}, '
                    f"unstable INTEGER, dir INTEGER, name {blob})")
        try:
            self.db.run(fill.replace("{t}", t), params)
            if trim:
                self.db.run(trim.replace("{t}", t))
            self.db.run(f"CREATE INDEX {t}_size ON {t} (size)")
            last = min_size - 1
            while True:
                counts = self.db.rows(f"SELECT size, count(*) FROM {t} WHERE size > {p} "
                                      "GROUP BY size ORDER BY size LIMIT 1000", (last,))
                if not counts:
                    return
                top, n = counts[-1][0], 0
                for size, count in counts:
                    n += count
                    if n >= rows_per_query:
                        top = size
                        break
                rows = self.db.rows(f"SELECT * FROM {t} WHERE size > {p} AND size <= {p} "
                                    "ORDER BY size, fs, ino", (last, top))
                last = int(top)
                yield from self._grouped(rows)
        finally:
            self.db.run(f"DROP TABLE IF EXISTS {t}")

    def _grouped(self, rows: list[Any]) -> Iterator[list[IndexedFile]]:
        """Rows (size, fs, ino, stat, hashes, unstable, dir, name) ordered by inode ->
        IndexedFile lists by size."""
        dirs = self.dirs.paths({int(r[8]) for r in rows})
        names: dict[tuple[int, int], list[bytes]] = {}
        inodes = []
        for r in rows:
            k = (r[1], r[2])
            if k not in names:
                names[k] = []
                inodes.append((r[1], r[2], r[0], *r[3:8]))
            if r[8] in dirs:
                names[k].append(join(dirs[r[8]], bytes(r[9])))
        for v in names.values():
            v.sort()
        yield from group_rows(inodes, names, self.dev_of)


# The names under the subtree `sub` with their inodes of size >= the parameter.
_UNDER = ("SELECT i.size, i.fs, i.ino, i.mtime_ns, i.mtime_ns + i.ctime_delta AS "
          'ctime_ns, i.head, i."full", i.unstable, e.dir, e.name FROM sub JOIN entries e '
          "ON e.dir = sub.id JOIN inodes i ON i.fs = sub.fs AND i.ino = e.ino WHERE i.size >= "
          "{p}")
# One name given by (directory, name), with its inode of size >= the first parameter.
_NAMED = ("SELECT i.size, i.fs, i.ino, i.mtime_ns, i.mtime_ns + i.ctime_delta, i.head, "
          'i."full", i.unstable, e.dir, e.name FROM entries e JOIN directories d ON d.id = '
          "e.dir JOIN inodes i ON i.fs = d.fs AND i.ino = e.ino WHERE i.size >= {p}")
# 2+ distinct inodes among a group's names (hardlinks: several names, one inode)
_MANY = "(min(ino) < max(ino) OR min(fs) < max(fs))"
# Of a table {t} of names: the sizes the hasher must see (2+ inodes, one without its
# full hash) and the duplicates among fully hashed sizes: nothing else can be in a
# group. ("full" IS NOT NULL: a row without one is then not kept, rather than NULL,
# which NOT (...) below would not delete either.)
_KEEP = (f'size IN (SELECT size FROM {{t}} GROUP BY size HAVING {_MANY} AND count("full") '
         f'< count(*)) OR ("full" IS NOT NULL AND (size, "full") IN (SELECT size, "full" FROM '
         f'{{t}} WHERE "full" IS NOT NULL GROUP BY size, "full" HAVING {_MANY}))')
# The rule over the names u
_EXACT = "SELECT * FROM u WHERE " + _KEEP.replace("{t}", "u")
# The same rule applied to a table {t} of names that holds, for each size or (size,
# hash) it has, every name of it under roots: what does not qualify goes. SQLite
# answers a row-value NOT IN that finds no match by scanning the whole list for a
# NULL, once per such row (a rescan of a tree whose files have copies outside it
# was quadratic: 20,000 such files, 10 s in this statement alone), and so it does
# NOT (... IN ...): there the rows to keep are named by rowid. PostgreSQL hashes
# either form.
_TRIM = {"sqlite": f"DELETE FROM {{t}} WHERE rowid NOT IN (SELECT rowid FROM {{t}} WHERE {_KEEP})",
         "postgresql": f"DELETE FROM {{t}} WHERE NOT ({_KEEP})"}
