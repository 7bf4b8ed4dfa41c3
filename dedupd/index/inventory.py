"""The inventory as it stands, without walking: duplicate groups and the copies
of one content, on this host or on every host sharing the database.

Content is (size, XXH3-128 of the whole file): what the scans hashed. These are
reports; nothing here acts on a file (every destructive step compares bytes
first, DESIGN.md). Only inodes with a whole-file hash take part: a file never
read in full (its size unique when it was scanned) has none.

A copy is one inode (a file with several names is one copy, its other names
listed as hardlinks), named by its host and its paths in that host's tree.
Reads only; one query per call, paths resolved per host (index/dirs.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dedupd.index.db import from_s64
from dedupd.index.dirs import DirTree, join, split
from dedupd.index.store import Store


@dataclass(frozen=True, slots=True)
class Copy:
    host: str
    ino: int
    paths: tuple[bytes, ...]  # every indexed name of the inode, sorted

    @property
    def path(self) -> bytes:
        return self.paths[0]


@dataclass(frozen=True, slots=True)
class ContentGroup:
    size: int
    full: bytes
    copies: tuple[Copy, ...]  # one per inode, sorted by (host, path)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(sorted({c.host for c in self.copies}))

    @property
    def wasted(self) -> int:
        return self.size * (len(self.copies) - 1)


# From the names: entries -> their directory (its filesystem) -> the inode by its key.
# The index keeps no index by inode number or size (docs/schema.md): one pass.
_SELECT = ('SELECT i.size, i."full", i.ino, f.host, e.dir, e.name FROM entries e '
           "JOIN directories d ON d.id = e.dir "
           "JOIN inodes i ON i.fs = d.fs AND i.ino = e.ino "
           "JOIN filesystems f ON f.id = i.fs ")


def groups(store: Store, *, all_hosts: bool = False, min_size: int = 1) -> list[ContentGroup]:
    """Contents held by two or more inodes: of this host's filesystems, or (all_hosts)
    of every host's. Largest waste first."""
    p = store.db.p
    mine = f" AND f2.host = {p}" if not all_hosts else ""
    sql = ('SELECT i2.size, i2."full" FROM inodes i2 JOIN filesystems f2 ON f2.id = i2.fs '
           f'WHERE i2."full" IS NOT NULL AND i2.size >= {p}{mine} '
           'GROUP BY i2.size, i2."full" HAVING COUNT(*) > 1')
    params: list[Any] = [min_size] + ([] if all_hosts else [store.host])
    where = "" if all_hosts else f"WHERE f.host = {p}"
    if not all_hosts:
        params.append(store.host)
    rows = store.db.rows(f"{_SELECT} JOIN ({sql}) g ON g.size = i.size "
                         f'AND g."full" = i."full" {where}', params)
    found = [g for g in _assemble(store, rows) if len(g.copies) > 1]
    found.sort(key=lambda g: (-g.wasted, g.copies[0].host, g.copies[0].path))
    return found


def copies(store: Store, size: int, full: bytes, *, all_hosts: bool = True) -> list[Copy]:
    """Every inode with this content, on this host or (all_hosts) on any."""
    p = store.db.p
    sql = f'{_SELECT} WHERE i.size = {p} AND i."full" = {p}'
    params: list[Any] = [size, full]
    if not all_hosts:
        sql += f" AND f.host = {p}"
        params.append(store.host)
    found = _assemble(store, store.db.rows(sql, params))
    return list(found[0].copies) if found else []


def indexed(store: Store, path: bytes, host: int | None = None
            ) -> tuple[int, int, int, int, bytes | None] | None:
    """(ino, size, mtime_ns, ctime_ns, full) of the index entry for path in the tree of
    host (default: this one), None when the index has no such name."""
    d, name = split(path)
    tree = store.dirs if host is None or host == store.host else DirTree(store.db, host)
    did = tree.find(d)
    if did is None or not name:
        return None
    p = store.db.p
    rows = store.db.rows('SELECT i.ino, i.size, i.mtime_ns, i.mtime_ns + i.ctime_delta, '
                         'i."full" '
                         "FROM entries e JOIN directories d ON d.id = e.dir "
                         "JOIN inodes i ON i.fs = d.fs AND i.ino = e.ino "
                         f"WHERE e.dir = {p} AND e.name = {p}", (did, name))
    if not rows:
        return None
    ino, size, mtime, ctime, full = rows[0]
    return (from_s64(int(ino)), int(size), int(mtime), int(ctime),
            None if full is None else bytes(full))


def host_names(store: Store) -> dict[int, str]:
    return {int(i): str(n) for i, n in store.db.rows("SELECT id, name FROM hosts")}


def _assemble(store: Store, rows: Iterable[Any]) -> list[ContentGroup]:
    """Rows (size, full, ino, host, dir, name) -> groups, paths resolved per host."""
    names = host_names(store)
    by_content: dict[tuple[int, bytes], dict[tuple[int, int], list[tuple[int, bytes]]]] = \
        defaultdict(lambda: defaultdict(list))
    dirs_of: dict[int, set[int]] = defaultdict(set)
    for size, full, ino, host, did, name in rows:
        key = (int(size), bytes(full))
        by_content[key][(int(host), int(ino))].append((int(did), bytes(name)))
        dirs_of[int(host)].add(int(did))
    paths: dict[tuple[int, int], bytes] = {}
    for host, ids in dirs_of.items():
        tree = store.dirs if host == store.host else DirTree(store.db, host)
        paths.update({(host, did): path for did, path in tree.paths(ids).items()})
    out = []
    for (size, full), inodes in by_content.items():
        members = []
        for (host, ino), entries in inodes.items():
            names_here = sorted(join(paths[(host, did)], name) for did, name in entries
                                if (host, did) in paths)
            if names_here:
                members.append(Copy(names.get(host, f"host#{host}"), from_s64(ino),
                                    tuple(names_here)))
        members.sort(key=lambda c: (c.host, c.path))
        out.append(ContentGroup(size, full, tuple(members)))
    return out

