"""The directories table: paths stored once per directory, as a tree per host.

A path is a label (DESIGN.md): here it is the chain of names from the host's root
directory (parent = -(host id), empty name) down to the directory. Files are
entries (directory id, own name). DirTree caches both directions for the life of
a Store; rows are only created (in the caller's transaction) or deleted with
their subtree, never renamed, so a cached id -> path stays true while it exists.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from dedupd.index.db import Db, IndexError_, chunks, run_schema

SUBTREE_BATCH = 500
_NOTHING = " ON CONFLICT (parent, name) DO NOTHING"
_ROWS = 200  # directories of one multi-row INSERT (3 parameters each)


def split(path: bytes) -> tuple[bytes, bytes]:
    """(directory, name) of an absolute path; the directory of "/x" is "/"."""
    d, _, name = path.rstrip(b"/").rpartition(b"/")
    return (d or b"/"), name


def join(d: bytes, name: bytes) -> bytes:
    return (d.rstrip(b"/") + b"/" + name) if name else d


class DirTree:
    """Directory ids of one host's tree. Thread-safe."""

    def __init__(self, db: Db, host_id: int) -> None:
        self.db, self.host = db, host_id
        self._lock = threading.Lock()
        self._id: dict[bytes, int] = {}
        self._path: dict[int, bytes] = {}
        self._fs: dict[int, int] = {}
        # ids of the directories made through this tree since the last reset (a
        # scan's start, or a failed transaction): no name of theirs but those
        # written since (by this Store; another's would be written alike, by a walk)
        self.made: set[int] = set()
        self._dropped: object = None  # meta dirs_dropped when the cache was last checked

    def drop_stale(self, cur: Any) -> None:
        """Empty the cache when directory rows were dropped since it was last checked
        (meta `dirs_dropped`, counted by a trigger, schema.py): another process's
        scan may have dropped a cached one mid-pass and SQLite given its id to another
        path. Called in a write transaction before it uses ids (SQLite: no other
        writer until it ends). An index without the count gets it here."""
        cur.execute("SELECT value FROM meta WHERE host = 0 AND \"key\" = 'dirs_dropped'")
        row = cur.fetchone()
        if row is None:  # drops were not counted until now: any may have happened
            run_schema(cur, self.db.dialect,
                       lambda s: "dirs_dropped" in s or "directories_dropped" in s)
            row = (None,)
        if row[0] != self._dropped or row[0] is None:
            self.reset()
            self._dropped = row[0]

    def _remember(self, path: bytes, did: int, fs: int) -> None:
        self._id[path], self._path[did], self._fs[did] = did, path, fs

    def _child(self, cur: Any, parent: int, name: bytes) -> tuple[int, int] | None:
        p = self.db.p
        cur.execute(f"SELECT id, fs FROM directories WHERE parent = {p} AND name = {p}",
                    (parent, name))
        r = cur.fetchone()
        return None if r is None else (int(r[0]), int(r[1]))

    def find(self, path: bytes, cur: Any = None) -> int | None:
        """The id of directory `path`, or None when the index has no such directory."""
        did = self._id.get(path)  # cached (one dict read: no lock needed)
        if did is not None:
            return did
        path = path.rstrip(b"/") or b"/"
        at, tail = path, []
        with self._lock:  # down from the nearest known ancestor, not from the root
            while at not in self._id and at != b"/":
                at, _, name = at.rpartition(b"/")
                at = at or b"/"
                if name:
                    tail.append(name)
            did = self._id.get(at)
        if did is not None and not tail:
            return did
        own = cur is None
        c = self.db.conn().cursor() if own else cur
        try:
            if did is None:  # at is "/", not met yet
                node = self._child(c, -self.host, b"")
                if node is None:
                    return None
                with self._lock:
                    self._remember(at, node[0], node[1])
                did = node[0]
            for name in reversed(tail):
                at = join(at, name)
                node = self._child(c, did, name)
                if node is None:
                    return None
                with self._lock:
                    self._remember(at, node[0], node[1])
                did = node[0]
            return did
        finally:
            if own:
                c.close()

    def ensure(self, cur: Any, path: bytes, fs: int) -> int:
        """The id of directory `path`, created (with its missing ancestors, all in
        `made`) in the caller's transaction. Its fs is set to `fs`; the caller learns
        of a change through changed_fs() before calling this."""
        path = path.rstrip(b"/") or b"/"
        missing, known = self._uncached(path)
        if not missing and known is not None:
            return self._with_fs(cur, known, fs)
        # Below the parent, or below a directory made since the scan began, it is most
        # likely new: made first (below), unless it exists. Else it is looked for first.
        if known is None or not (len(missing) == 1 or known in self.made):
            did = self.find(path, cur)
            if did is not None:
                return self._with_fs(cur, did, fs)
            missing, known = self._uncached(path)  # find() cached the ancestors it found
        # Below its nearest known ancestor, path and the ancestors between were absent
        # when last looked for. Another connection may be making them now (PostgreSQL,
        # READ COMMITTED: its rows are invisible until it commits, then a plain INSERT
        # fails on the unique key): the first is inserted ON CONFLICT DO NOTHING, and if
        # it exists by then, find() looks again (a new statement sees the committed
        # rows) and the rest is made below what it found.
        for _ in range(path.count(b"/") + 1):
            if known is None:  # the host's root itself is not made yet
                missing.append((b"/", b""))
            made = self._chain(cur, path, fs, -self.host if known is None else known,
                               missing)
            if made is not None:
                return made
            did = self.find(path, cur)
            if did is not None:
                return self._with_fs(cur, did, fs)
            missing, known = self._uncached(path)
        raise IndexError_(f"directory {path!r}: made and removed by another connection "
                          "while this one made it")

    def _with_fs(self, cur: Any, did: int, fs: int) -> int:
        """did, its fs set to fs (in the index and the cache) if it was another."""
        if self._fs.get(did) != fs:
            cur.execute(f"UPDATE directories SET fs = {self.db.p} WHERE id = {self.db.p}",
                        (fs, did))
            with self._lock:
                self._fs[did] = fs
        return did

    def ensure_many(self, cur: Any, wanted: Sequence[tuple[bytes, int]]) -> list[int]:
        """ensure(cur, path, fs) of each (path, fs), in order. The directories missing
        below a cached one are inserted many to a statement, level by level (a first
        scan makes one for every few files); the others, and those that exist
        already (made meanwhile by another connection), go through ensure()."""
        want = {(path.rstrip(b"/") or b"/"): fs for path, fs in wanted}
        todo: dict[bytes, tuple[bytes, bytes]] = {}  # path -> (parent path, name), to make
        for path in want:
            missing, known = self._uncached(path)
            if known is not None:
                for at, name in missing:
                    todo[at] = (at[:len(at) - len(name) - 1] or b"/", name)
        while todo:
            level = [(at, above, name) for at, (above, name) in todo.items()
                     if above not in todo]
            for at, _above, _name in level:
                del todo[at]
            for part in chunks(level, _ROWS):
                self._make_many(cur, [(at, name, self._id[above], want.get(at, 0))
                                      for at, above, name in part if above in self._id])
        ids, fss = self._id, self._fs
        return [did if (did := ids.get(path)) is not None and fss.get(did) == fs
                else self.ensure(cur, path, fs) for path, fs in wanted]

    def _make_many(self, cur: Any, rows: list[tuple[bytes, bytes, int, int]]) -> None:
        """Insert directories (path, name, parent id, fs), those that do not exist;
        the ones made are cached and in `made`."""
        if not rows:
            return
        one = f"({self.db.marks(3)})"
        cur.execute(f"INSERT INTO directories (parent, name, fs) VALUES "
                    f"{', '.join([one] * len(rows))}{_NOTHING} RETURNING id, parent, name",
                    [x for _path, name, parent, fs in rows for x in (parent, name, fs)])
        got = {(int(parent), bytes(name)): int(did) for did, parent, name in cur.fetchall()}
        with self._lock:
            for path, name, parent, fs in rows:
                did = got.get((parent, name))
                if did is not None:
                    self._remember(path, did, fs)
                    self.made.add(did)

    def _uncached(self, path: bytes) -> tuple[list[tuple[bytes, bytes]], int | None]:
        """(path, name) of `path` and of its ancestors not cached, deepest first, and
        the id of the nearest cached one (None: not even "/")."""
        missing: list[tuple[bytes, bytes]] = []
        at = path
        with self._lock:
            while at not in self._id and at != b"/":
                above, _, name = at.rpartition(b"/")
                missing.append((at, name))
                at = above or b"/"
            return missing, self._id.get(at)

    def _chain(self, cur: Any, path: bytes, fs: int, parent: int,
               missing: list[tuple[bytes, bytes]]) -> int | None:
        """Make the directories `missing` (deepest first) from the top down under
        parent; the id of the last (path, with fs; the others with fs 0), or None
        when the first exists already (made by another connection: nothing made)."""
        conflict = True
        for at, name in reversed(missing):
            made = self._make(cur, at, name, parent, fs if at == path else 0, conflict)
            if made is None:
                return None
            parent, conflict = made, False  # below a directory just made: none exists
        return parent

    def _make(self, cur: Any, path: bytes, name: bytes, parent: int, fs: int,
              conflict: bool = False) -> int | None:
        """Insert directory `path` (`name` under parent); its id, or None when it
        exists already (with conflict=True; else that is an error)."""
        p = self.db.p
        cur.execute(f"INSERT INTO directories (parent, name, fs) VALUES ({p}, {p}, {p})"
                    f"{_NOTHING if conflict else ''} RETURNING id", (parent, name, fs))
        row = cur.fetchone()
        if row is None:
            return None
        did = int(row[0])
        with self._lock:
            self._remember(path, did, fs)
            self.made.add(did)
        return did

    def fs_of(self, did: int) -> int | None:
        with self._lock:
            return self._fs.get(did)

    def paths(self, ids: Iterable[int]) -> dict[int, bytes]:
        """id -> path of the given directory ids (the ones still in the index).
        Raises IndexError_ for an id of another host's tree (nothing cached)."""
        want = set(ids)
        out: dict[int, bytes] = {}
        with self._lock:
            for i in list(want):
                if i in self._path:
                    out[i] = self._path[i]
                    want.discard(i)
        if not want:
            return out
        rows: dict[int, tuple[int, bytes, int]] = {}
        todo = set(want)
        while todo:
            part = sorted(todo)[:SUBTREE_BATCH]
            todo.difference_update(part)
            for i, parent, name, fs in self.db.rows(
                    f"SELECT id, parent, name, fs FROM directories WHERE id IN "
                    f"({self.db.marks(len(part))})", part):
                rows[int(i)] = (int(parent), bytes(name), int(fs))
                if parent >= 0 and parent not in rows and parent not in self._path:
                    todo.add(int(parent))
        for i in want:
            path = self._resolve(i, rows)
            if path is not None:
                out[i] = path
        return out

    def _resolve(self, i: int, rows: dict[int, tuple[int, bytes, int]]) -> bytes | None:
        chain: list[int] = []
        at = i
        while True:
            with self._lock:
                if at in self._path:
                    path = self._path[at]
                    break
            r = rows.get(at)
            if r is None:
                return None
            if r[0] < 0:
                if r[0] != -self.host:  # another host's "/": caching it would graft on it
                    raise IndexError_(f"directory id {i} belongs to host id {-r[0]}, not to "
                                      f"host id {self.host} (use a DirTree of that host)")
                path = b"/"
                with self._lock:
                    self._remember(path, at, r[2])
                break
            chain.append(at)
            at = r[0]
        for did in reversed(chain):
            path = join(path, rows[did][1])
            with self._lock:
                self._remember(path, did, rows[did][2])
        return path

    def subtree(self, roots: Sequence[bytes]) -> list[tuple[int, int]]:
        """(id, fs) of every indexed directory at or below the given paths."""
        return [(i, fs) for i, fs, _parent in self.subtree_parents(roots)]

    def subtree_parents(self, roots: Sequence[bytes]) -> list[tuple[int, int, int]]:
        """(id, fs, parent id) of every indexed directory at or below the given paths."""
        out: list[tuple[int, int, int]] = []
        frontier = [d for d in (self.find(r) for r in roots) if d is not None]
        seen = set(frontier)
        if frontier:
            rows = self.db.rows(f"SELECT id, fs, parent FROM directories WHERE id IN "
                                f"({self.db.marks(len(frontier))})", frontier)
            out.extend((int(a), int(b), int(c)) for a, b, c in rows)
        while frontier:
            nxt: list[int] = []
            for k in range(0, len(frontier), SUBTREE_BATCH):
                part = frontier[k:k + SUBTREE_BATCH]
                for i, fs, parent in self.db.rows(
                        f"SELECT id, fs, parent FROM directories WHERE parent IN "
                        f"({self.db.marks(len(part))})", part):
                    if i not in seen:
                        seen.add(int(i))
                        out.append((int(i), int(fs), int(parent)))
                        nxt.append(int(i))
            frontier = nxt
        return out

    def listing(self, roots: Sequence[bytes]) -> list[tuple[int, int, bytes, bytes | None]]:
        """(id, fs, path, listing digest) of every indexed directory at or below the
        given paths, each once; their paths are cached on the way (one query per
        level and SUBTREE_BATCH directories, like subtree). It runs before a
        rescan's walk has its digests: one pass over the rows, nothing per row
        but the path and the caches."""
        out: list[tuple[int, int, bytes, bytes | None]] = []
        frontier = sorted({d for d in (self.find(r) for r in roots) if d is not None})
        paths = self.paths(frontier)
        frontier = [i for i in frontier if i in paths]
        rows, marks = self.db.rows, self.db.marks
        ids: dict[bytes, int] = {}
        fss: dict[int, int] = {}
        for k in range(0, len(frontier), SUBTREE_BATCH):
            part = frontier[k:k + SUBTREE_BATCH]
            for i, fs, g in rows("SELECT id, fs, digest FROM directories WHERE id "
                                 f"IN ({marks(len(part))})", part):
                out.append((i, fs, paths[i], None if g is None else bytes(g)))
        # below the roots, level by level: a path is its parent's (known by then) + name
        slash = {i: (b"" if paths[i] == b"/" else paths[i]) + b"/" for i in frontier}
        query = "SELECT id, fs, digest, parent, name FROM directories WHERE parent IN ({})"
        while frontier:
            nxt: list[int] = []
            for k in range(0, len(frontier), SUBTREE_BATCH):
                part = frontier[k:k + SUBTREE_BATCH]
                for i, fs, g, parent, name in rows(query.format(marks(len(part))), part):
                    if i in paths:
                        continue  # nested roots: met already
                    path = slash[parent] + name
                    paths[i], ids[path], fss[i] = path, i, fs
                    slash[i] = path + b"/"
                    out.append((i, fs, path, None if g is None else bytes(g)))
                    nxt.append(i)
            frontier = nxt
        with self._lock:
            self._id.update(ids)
            self._path.update((i, p) for p, i in ids.items())
            self._fs.update(fss)
        return out

    def reset(self) -> None:
        """Drop every cached id (after a failed transaction that may have made some)."""
        with self._lock:
            self._id.clear()
            self._path.clear()
            self._fs.clear()
            self.made.clear()

    def forget(self, ids: Iterable[int]) -> None:
        """Drop cached paths of deleted directories."""
        with self._lock:
            for i in ids:
                path = self._path.pop(i, None)
                self._fs.pop(i, None)
                self.made.discard(i)
                if path is not None:
                    self._id.pop(path, None)


def subtree_sql(db: Db, root_ids: Sequence[int]) -> tuple[str, list[int]]:
    """A WITH clause defining sub(id, fs): the directories at or below root_ids."""
    ids = list(root_ids) or [-1]  # no such directory: an empty subtree
    return ("WITH RECURSIVE sub(id, fs) AS (SELECT id, fs FROM directories WHERE id IN "
            f"({db.marks(len(ids))}) UNION ALL SELECT d.id, d.fs FROM directories d "
            "JOIN sub s ON d.parent = s.id) "), ids
