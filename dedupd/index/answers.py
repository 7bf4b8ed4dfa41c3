"""A scan's duplicate groups, kept for the next rescan that finds nothing changed.

What a scan reports is decided by what its walk listed (every directory's names,
inode numbers, sizes, mtimes and ctimes: the listing digests of walk.py) and by
the index's hashes of those files, which the index keeps only while the stat they
were read at stays. A rescan whose walk lists exactly what an earlier scan's did
(the same fingerprint: every directory's path and digest, under the same roots and
options) while every directory is skipped unchanged against the index, reports
what that scan reported, unless the index has since replaced or dropped a hash
behind an unchanged stat (content that changed without its stat: the
`inodes_hash_moved` trigger counts those in the host's hash_epoch of meta, schema.py), or
deleted a row with a full hash (`inodes_gone`). Such a rescan reads its groups
from here: one row holding each group's size and full hash, and each member's
inode row as it was kept (inode, mtime, ctime, head, unstable) with its names
(directory id, own name), instead of a pass over the index. Its members' rows are
not read again: while the epoch stays, none was deleted and none had its hash
replaced or dropped behind an unchanged stat; a new stat is seen by the walk (the
fingerprint), and the hashes a new stat drops come back only with that stat.

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
from dedupd.index.db import run_schema
from dedupd.index.dirs import split

if TYPE_CHECKING:
    from dedupd.index.store import IndexedFile, Store

FORMAT = 4  # of the key and of the packed answer


class Kept:
    """An answers row (a plain class: a NamedTuple costs a scan's start 1 ms)."""

    __slots__ = ("answer", "epoch", "fingerprint")

    def __init__(self, fingerprint: bytes, epoch: int, answer: bytes) -> None:
        self.fingerprint, self.epoch, self.answer = fingerprint, epoch, answer


def key(roots: Sequence[bytes], options: Sequence[Any]) -> str:
    """The answers row of these roots and options (whatever decides the answer
    besides the tree: min size, excludes, mounts, settling), for this dedupd:
    `<roots>:<options>`, where <roots> is of the roots alone (keep() replaces the
    answer of the same roots under other options: one row per roots set)."""
    names = [os.fsdecode(r) for r in roots]
    doc = json.dumps([__version__, FORMAT, names, list(options)])
    return (blake2b(json.dumps([FORMAT, names]).encode(), digest_size=12).hexdigest() + ":"
            + blake2b(doc.encode(), digest_size=16).hexdigest())


def fingerprint(listed: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Of the (directory path, listing digest) pairs of one walk, in any order."""
    return blake2b(marshal.dumps(sorted(listed), 2), digest_size=16).digest()


def _dirs_check(paths: Iterable[tuple[int, bytes]]) -> bytes:
    """Of the answer's directory ids with their paths: a directory row dropped and its
    id given to another path (SQLite reuses the highest id) must not rename a member."""
    return blake2b(marshal.dumps(sorted((d, p.rstrip(b"/")) for d, p in paths), 2),
                           digest_size=16).digest()


_EPOCH = "SELECT value FROM meta WHERE host = {p} AND \"key\" = 'hash_epoch'"


def epoch(store: Store) -> int | None:
    """The host's hash_epoch now (None in an index without one). An index whose
    host has none yet (made by an older dedupd, or a host new to it) gets it here:
    its triggers, and its row from host 0's counter, which counted for every host
    until then (so the answers kept at it hold)."""
    rows = store.db.rows(_EPOCH.format(p=store.db.p), (store.host,))
    if not rows:
        _host_epoch(store)
        rows = store.db.rows(_EPOCH.format(p=store.db.p), (store.host,))
    return int(rows[0][0]) if rows else None


def _host_epoch(store: Store) -> None:
    with store.db.tx() as cur:
        # the triggers first: on PostgreSQL CREATE TRIGGER waits for the writers of
        # inodes, so no move is missed between the value read below and the first count
        run_schema(cur, store.dialect,
                   lambda s: "_host" in s and ("TRIGGER" in s or "FUNCTION" in s))
        cur.execute("INSERT INTO meta (host, \"key\", value) SELECT "
                    f"{store.db.p}, \"key\", value FROM meta WHERE host = 0 AND \"key\" = "
                    "'hash_epoch' ON CONFLICT (host, \"key\") DO NOTHING", (store.host,))


def kept(store: Store, k: str) -> Kept | None:
    p = store.db.p
    rows = store.db.rows(f'SELECT fingerprint, epoch, answer FROM answers WHERE host = {p} '
                         f'AND "key" = {p}', (store.host, k))
    return Kept(bytes(rows[0][0]), int(rows[0][1]), bytes(rows[0][2])) if rows else None


def unpack(store: Store, answer: bytes) -> list[tuple[int, list[IndexedFile]]] | None:
    """The groups (size, files) of a kept answer, its members as they were kept,
    with each filesystem's current st_dev; None when a directory of theirs is gone
    (or its id names another path now), or a filesystem is not reachable now. Its
    caller checks hash_epoch: the answer holds only while it has not moved."""
    from dedupd.index.store import IndexedFile

    (sizes, counts, fulls, fss, inos, mtimes, ctimes, heads, unstables, npaths, dirs, names,
     check) = marshal.loads(zlib.decompress(answer))
    found = store.dirs.paths(set(dirs))
    where = {d: path.rstrip(b"/") + b"/" for d, path in found.items()}
    devs = {fs: dev for fs in set(fss) if (dev := store.dev_of(fs)) is not None}
    if len(devs) < len(set(fss)) or len(where) < len(set(dirs)) or \
            _dirs_check(found.items()) != check:
        return None
    names_of = [where[d] + name for d, name in zip(dirs, names, strict=True)]
    # IndexedFile's fields as one tuple, made by tuple's own constructor: its
    # NamedTuple __new__ is a Python call, a third of this loop's time
    new = tuple.__new__
    out = []
    k = at = 0
    for size, count, full in zip(sizes, counts, fulls, strict=True):
        group = []
        for j in range(k, k + count):
            n = npaths[j]
            group.append(new(IndexedFile, (
                devs[fss[j]], inos[j], size, mtimes[j], ctimes[j], heads[j], full,
                unstables[j], tuple(names_of[at:at + n]))))
            at += n
        k += count
        out.append((size, group))
    return out


def keep(store: Store, k: str, fp: bytes, since: int,
         groups: Iterable[tuple[int, Sequence[IndexedFile]]]) -> bool:
    """Keep the answer `groups` of a scan whose walk had the fingerprint fp, if no
    hash moved since it began (epoch `since`). False when not kept."""
    sizes, counts, fulls, fss, inos, npaths, dirs, names = [], [], [], [], [], [], [], []
    mtimes, ctimes, heads, unstables = [], [], [], []
    at: dict[int, bytes] = {}  # directory id -> its path, as the answer names it
    for size, files in groups:
        sizes.append(size)
        counts.append(len(files))
        fulls.append(files[0].full)
        for f in files:
            fs = store.key_of(f.dev, f.ino)
            if fs is None or f.full is None or f.full != files[0].full:
                return False
            fss.append(fs[0])
            inos.append(f.ino)
            mtimes.append(f.mtime_ns)
            ctimes.append(f.ctime_ns)
            heads.append(f.head)
            unstables.append(f.unstable)
            npaths.append(len(f.paths))
            for path in f.paths:
                d, name = split(path)
                did = store.dirs.find(d)
                if did is None:
                    return False
                dirs.append(did)
                names.append(name)
                at[did] = d
    blob = zlib.compress(marshal.dumps((sizes, counts, fulls, fss, inos, mtimes, ctimes, heads,
                                        unstables, npaths, dirs, names,
                                        _dirs_check(at.items())), 2), 1)
    p = store.db.p
    lock = " FOR UPDATE" if store.dialect == "postgresql" else ""  # against a bump meanwhile
    with store.db.tx() as cur:
        cur.execute(_EPOCH.format(p=p) + lock, (store.host,))
        row = cur.fetchone()
        if row is None or int(row[0]) != since or not _counts_deletes(store, cur):
            return False
        cur.execute(f'INSERT INTO answers (host, "key", fingerprint, epoch, answer) VALUES '
                    f'({p}, {p}, {p}, {p}, {p}) ON CONFLICT (host, "key") DO UPDATE SET '
                    "fingerprint = excluded.fingerprint, epoch = excluded.epoch, "
                    "answer = excluded.answer", (store.host, k, fp, since, blob))
        # hash_epoch only grows: an answer kept at an older epoch is never reported
        # again. One answer per roots set (the newest: another min size or dedupd
        # version of the same roots goes; a key of an older FORMAT has no ':'): a
        # host keeps one row per tree it scans, not one per option ever tried.
        cur.execute(f"DELETE FROM answers WHERE host = {p} AND (epoch < {p} OR \"key\" NOT "
                    f"LIKE {p} OR (\"key\" LIKE {p} AND \"key\" <> {p}))",
                    (store.host, since, "%:%", k.partition(":")[0] + ":%", k))
    return True


def _counts_deletes(store: Store, cur: Any) -> bool:
    """Whether the index counts deleted rows in hash_epoch (the `inodes_gone`
    trigger, schema.py), which an answer relies on. An index made by an older
    dedupd gets it here, in the caller's transaction; a scan that began before it
    was there keeps no answer (a row deleted meanwhile went uncounted)."""
    if store.dialect == "postgresql":
        cur.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'inodes_gone' AND "
                    "tgrelid = 'inodes'::regclass")
    else:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND "
                    "name = 'inodes_gone'")
    if cur.fetchone() is not None:
        return True
    run_schema(cur, store.dialect, lambda s: " inodes_gone AFTER " in s)  # not _host's
    return False
