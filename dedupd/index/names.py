"""Name queries of the index: paths of directories + entries, for a Store.

A mixin of Store (dedupd/index/store.py), split off by role: what the change
sources and tests ask about names (below a directory, of an inode), and how
names and the inodes left without one are forgotten.
Paths are absolute; devices the current st_dev of their filesystem.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dedupd.index.db import BATCH, Db, chunks, from_s64
from dedupd.index.dirs import DirTree, join, split

if TYPE_CHECKING:
    from collections.abc import Callable


class Names:
    db: Db
    dirs: DirTree
    host: int
    dialect: str
    orphans_maybe: bool
    dev_of: Callable[..., int | None]
    key_of: Callable[[int, int], tuple[int, int] | None]
    bulk: Any

    def paths_below(self, root: bytes) -> Iterator[tuple[bytes, int, int]]:
        """(path, dev, ino) of every indexed name below root, in pages of directories
        (no read stays open while the caller writes). Names on a filesystem that is
        not reachable now are left out."""
        sub = [d for d in self.dirs.subtree([root])]
        for part in chunks(sub, 200):
            fs = dict(part)
            names = self.dirs.paths(fs)
            for did, name, ino in self.db.rows(
                    f"SELECT dir, name, ino FROM entries WHERE dir IN "
                    f"({self.db.marks(len(part))}) ORDER BY dir, name", list(fs)):
                dev = self.dev_of(fs[did])
                if dev is not None and did in names:
                    yield join(names[did], bytes(name)), dev, from_s64(ino)

    def forget_paths(self, paths: Sequence[bytes]) -> int:
        """Drop these names, then inodes left without any. Returns names dropped."""
        rows = self._entry_keys(paths)
        if not rows:
            return 0
        p = self.db.p
        with self.db.tx() as cur:
            cur.executemany(f"DELETE FROM entries WHERE dir = {p} AND name = {p}", rows)
            cur.executemany(f"UPDATE directories SET digest = NULL WHERE id = {p}",
                            [(d,) for d in {d for d, _n in rows}])
            self.drop_orphans(cur)
        return len(rows)

    def _entry_keys(self, paths: Iterable[bytes]) -> list[tuple[int, bytes]]:
        """(directory id, name) of the given paths whose directory is indexed."""
        out = []
        for path in paths:
            d, name = split(path)
            did = self.dirs.find(d)
            if did is not None:
                out.append((did, name))
        return out

    def names_in(self, directory: bytes) -> list[bytes]:
        """Paths of the names indexed directly in directory."""
        did = self.dirs.find(directory)
        if did is None:
            return []
        return [join(directory, bytes(r[0])) for r in self.db.rows(
            f"SELECT name FROM entries WHERE dir = {self.db.p}", (did,))]

    def other_names(self, paths: Iterable[bytes]) -> set[bytes]:
        """Every indexed name of the inodes the index has under these paths."""
        keys: set[tuple[int, int]] = set()
        for part in chunks(self._entry_keys(paths), BATCH):
            for did, name in part:
                fs = self.dirs.fs_of(did)
                for r in self.db.rows(f"SELECT ino FROM entries WHERE dir = {self.db.p} AND "
                                      f"name = {self.db.p}", (did, name)):
                    if fs is not None:
                        keys.add((fs, r[0]))
        return {p for v in self._names_of(None, sorted(keys)).values() for p in v}

    def scan_paths(self, scan_id: int | None = None
                   ) -> list[tuple[bytes, int, int, int, int]]:
        """(path, ino, size, mtime_ns, ctime_ns) of every name of this host seen in
        scan_id (default: every name): what tests compare with a tree."""
        p = self.db.p
        rows = self.db.rows(
            "SELECT e.dir, e.name, e.ino, i.size, i.mtime_ns, i.mtime_ns + i.ctime_delta "
            "FROM entries e "
            "JOIN directories d ON d.id = e.dir JOIN inodes i ON i.fs = d.fs AND i.ino = e.ino "
            f"JOIN filesystems f ON f.id = d.fs WHERE f.host = {p}"
            + ("" if scan_id is None else f" AND e.seen = {p}"),
            (self.host,) if scan_id is None else (self.host, scan_id))
        names = self.dirs.paths({int(r[0]) for r in rows})
        return sorted((join(names[r[0]], bytes(r[1])), from_s64(r[2]), *r[3:]) for r in rows
                      if r[0] in names)

    def _names_of(self, scan_id: int | None, keys: list[tuple[int, int]]
                  ) -> dict[tuple[int, int], list[bytes]]:
        """Paths seen in this scan (None: any) of the given (fs, signed ino) keys,
        sorted per inode."""
        want = set(keys)
        found: list[tuple[tuple[int, int], int, bytes]] = []
        cur = self.db.conn().cursor()
        try:
            for part in chunks(sorted({n for _f, n in keys}), BATCH):
                for fs, ino, did, name, seen in self.bulk.names_of_inodes(cur, part):
                    if (fs, ino) in want and (scan_id is None or seen == scan_id):
                        found.append(((fs, ino), did, name))
        finally:
            cur.close()
        dirs = self.dirs.paths({did for _k, did, _n in found})
        out: dict[tuple[int, int], list[bytes]] = defaultdict(list)
        for k, did, name in found:
            if did in dirs:
                out[k].append(join(dirs[did], name))
        for v in out.values():
            v.sort()
        return out

    def drop_orphans(self, cur: Any) -> None:
        """Delete inode rows no entry names any more (in the caller's transaction).

        One pass over the names: PostgreSQL plans NOT EXISTS as an anti-join; SQLite
        would run it once per inode, so it gets the inodes EXCEPT the named ones (one
        sort of each). Not NOT IN over a row-value list: SQLite answers every orphan
        (a value not in the list) by scanning the whole list, in case it holds a NULL,
        so a pass that relinked 1,092 of 2,892 names spent 70 ms here (issue 16)."""
        names = "SELECT d.fs, e.ino FROM entries e JOIN directories d ON d.id = e.dir"
        if self.dialect == "sqlite":
            cur.execute("DELETE FROM inodes WHERE (fs, ino) IN "
                        f"(SELECT fs, ino FROM inodes EXCEPT {names})")
        else:
            cur.execute(f"DELETE FROM inodes WHERE NOT EXISTS ({names} "
                        "WHERE e.ino = inodes.ino AND d.fs = inodes.fs)")
        self.orphans_maybe = False

    def forget(self, keys: Iterable[tuple[int, int]]) -> None:
        """Remove inodes (and their names) that turned out to be gone."""
        ks = [k for k in (self.key_of(d, n) for d, n in keys) if k is not None]
        by_fs: dict[int, list[int]] = defaultdict(list)
        for f, n in ks:
            by_fs[f].append(n)
        p = self.db.p
        with self.db.tx() as cur:
            for f, inos in by_fs.items():
                for part in chunks(inos, BATCH):
                    cur.execute(f"DELETE FROM entries WHERE ino IN ({self.db.marks(len(part))}) "
                                f"AND dir IN (SELECT id FROM directories WHERE fs = {p})",
                                (*part, f))
            cur.executemany(f"DELETE FROM inodes WHERE fs = {p} AND ino = {p}", ks)
            # which directories lost a name is not known here: their filesystems'
            # digests go, so the next walk lists those directories again
            cur.executemany(f"UPDATE directories SET digest = NULL WHERE fs = {p}",
                            [(f,) for f in by_fs])
