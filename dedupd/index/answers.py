"""A scan's duplicate groups, kept for the next rescan that finds nothing changed.

What a scan reports is decided by what its walk listed (every directory's names,
inode numbers, sizes, mtimes and ctimes: the listing digests of walk.py) and by
the index's hashes of those files, which the index keeps only while the stat they
were read at stays. A rescan whose walk lists exactly what an earlier scan's did
(the same fingerprint: every directory's path and digest, under the same roots and
options) while every directory is skipped unchanged against the index, reports
what that scan reported, unless the index has since replaced or dropped a hash
behind an unchanged stat (content that changed without its stat: the
`inodes_hash_moved` trigger counts those in meta's hash_epoch, schema.py). Such
a rescan reads its groups from here: one row naming the inodes of each group and
their names (directory id, own name), and their inode rows by key, instead of a
pass over the index. A member whose row is gone, or no longer has the group's
size and full hash, voids the answer.

Only a clean answer is kept: no problem in the walk or the hashing, no file left
pending, every directory digested, and no hash moved while the scan ran.
"""

from __future__ import annotations

import json
import marshal
import os
import zlib
from _blake2 import blake2b  # hashlib's, without its import of OpenSSL (a scan's start)
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from dedupd import __version__
from dedupd.index.dirs import split

if TYPE_CHECKING:
    from dedupd.index.store import IndexedFile, Store

FORMAT = 2  # of the key and of the packed answer
_HALF, _WRAP = 1 << 63, 1 << 64  # db.to_s64 and from_s64, inline in unpack's loops


class Kept:
    """An answers row (a plain class: a NamedTuple costs a scan's start 1 ms)."""

    __slots__ = ("answer", "epoch", "fingerprint")

    def __init__(self, fingerprint: bytes, epoch: int, answer: bytes) -> None:
        self.fingerprint, self.epoch, self.answer = fingerprint, epoch, answer


def key(roots: Sequence[bytes], options: Sequence[Any]) -> str:
    """The answers row of these roots and options (whatever decides the answer
    besides the tree: min size, excludes, mounts, settling), for this dedupd."""
    doc = json.dumps([__version__, FORMAT, [os.fsdecode(r) for r in roots], list(options)])
    return blake2b(doc.encode(), digest_size=32).hexdigest()


def fingerprint(listed: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Of the (directory path, listing digest) pairs of one walk, in any order."""
    return blake2b(marshal.dumps(sorted(listed), 2), digest_size=16).digest()


def _dirs_check(paths: Iterable[tuple[int, bytes]]) -> bytes:
    """Of the answer's directory ids with their paths: a directory row dropped and its
    id given to another path (SQLite reuses the highest id) must not rename a member."""
    return blake2b(marshal.dumps(sorted((d, p.rstrip(b"/")) for d, p in paths), 2),
                           digest_size=16).digest()


def epoch(store: Store) -> int | None:
    """meta's hash_epoch now (None in an index without it)."""
    rows = store.db.rows("SELECT value FROM meta WHERE host = 0 AND \"key\" = 'hash_epoch'")
    return int(rows[0][0]) if rows else None


def kept(store: Store, k: str) -> Kept | None:
    p = store.db.p
    rows = store.db.rows(f'SELECT fingerprint, epoch, answer FROM answers WHERE host = {p} '
                         f'AND "key" = {p}', (store.host, k))
    return Kept(bytes(rows[0][0]), int(rows[0][1]), bytes(rows[0][2])) if rows else None


def unpack(store: Store, answer: bytes) -> list[tuple[int, list[IndexedFile]]] | None:
    """The groups (size, files) of a kept answer, as the index has their inodes now
    and with each filesystem's current st_dev; None when one is gone from the index,
    or no longer has its group's size and full hash, or its filesystem is not
    reachable now. (It runs beside an unchanged rescan's walk, once per member: one
    dict per filesystem keyed by the stored inode number, no per-row conversion.)"""
    from dedupd.index.store import BATCH, IndexedFile, chunks

    sizes, counts, fss, inos, npaths, dirs, names, check = marshal.loads(
        zlib.decompress(answer))
    # the inode numbers as the index stores them (signed 64 bits: db.to_s64), made once
    keys = [i - _WRAP if i >= _HALF else i for i in inos]
    p = store.db.p
    rows: dict[int, dict[int, tuple[Any, ...]]] = {}
    for fs in set(fss):
        got = rows[fs] = {}
        mine = [i for f, i in zip(fss, keys, strict=True) if f == fs]
        for part in chunks(mine, BATCH):
            got.update((r[0], r) for r in store.db.rows(
                f"SELECT ino, size, mtime_ns, mtime_ns + ctime_delta, head, \"full\", "
                f"unstable FROM inodes WHERE fs = {p} AND ino IN "
                f"({store.db.marks(len(part))})", (fs, *part)))
    found = store.dirs.paths(set(dirs))
    where = {d: path.rstrip(b"/") + b"/" for d, path in found.items()}
    devs = {fs: dev for fs in rows if (dev := store.dev_of(fs)) is not None}
    if len(devs) < len(rows) or len(where) < len(set(dirs)) or \
            _dirs_check(found.items()) != check:
        return None
    names_of = [where[d] + name for d, name in zip(dirs, names, strict=True)]
    # IndexedFile's fields as one tuple, made by tuple's own constructor: its
    # NamedTuple __new__ is a Python call, a third of this loop's time
    new = tuple.__new__
    out = []
    k = at = 0
    for size, count in zip(sizes, counts, strict=True):
        group = []
        full = None
        for j in range(k, k + count):
            fs = fss[j]
            r = rows[fs].get(keys[j])
            if r is None or r[1] != size or r[5] is None or (full is not None and r[5] != full):
                return None
            full, head, n = r[5], r[4], npaths[j]
            group.append(new(IndexedFile, (
                devs[fs], inos[j], size, r[2], r[3],
                None if head is None else head + _WRAP if head < 0 else head, full, r[6],
                tuple(names_of[at:at + n]))))
            at += n
        k += count
        out.append((size, group))
    return out


def keep(store: Store, k: str, fp: bytes, since: int,
         groups: Iterable[tuple[int, Sequence[IndexedFile]]]) -> bool:
    """Keep the answer `groups` of a scan whose walk had the fingerprint fp, if no
    hash moved since it began (epoch `since`). False when not kept."""
    sizes, counts, fss, inos, npaths, dirs, names = [], [], [], [], [], [], []
    at: dict[int, bytes] = {}  # directory id -> its path, as the answer names it
    for size, files in groups:
        sizes.append(size)
        counts.append(len(files))
        for f in files:
            fs = store.key_of(f.dev, f.ino)
            if fs is None:
                return False
            fss.append(fs[0])
            inos.append(f.ino)
            npaths.append(len(f.paths))
            for path in f.paths:
                d, name = split(path)
                did = store.dirs.find(d)
                if did is None:
                    return False
                dirs.append(did)
                names.append(name)
                at[did] = d
    blob = zlib.compress(marshal.dumps((sizes, counts, fss, inos, npaths, dirs, names,
                                        _dirs_check(at.items())), 2), 1)
    p = store.db.p
    lock = " FOR UPDATE" if store.dialect == "postgresql" else ""  # against a bump meanwhile
    with store.db.tx() as cur:
        cur.execute(f"SELECT value FROM meta WHERE host = 0 AND \"key\" = 'hash_epoch'{lock}")
        row = cur.fetchone()
        if row is None or int(row[0]) != since:
            return False
        cur.execute(f'INSERT INTO answers (host, "key", fingerprint, epoch, answer) VALUES '
                    f'({p}, {p}, {p}, {p}, {p}) ON CONFLICT (host, "key") DO UPDATE SET '
                    "fingerprint = excluded.fingerprint, epoch = excluded.epoch, "
                    "answer = excluded.answer", (store.host, k, fp, since, blob))
        # hash_epoch only grows: an answer kept at an older epoch is never reported again
        cur.execute(f"DELETE FROM answers WHERE host = {p} AND epoch < {p}", (store.host, since))
    return True
