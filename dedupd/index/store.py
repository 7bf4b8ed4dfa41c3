"""Store: every query the index answers, behind one class.

Blocking (plain DB-API, dedupd/index/db.py): the daemon calls it from worker threads. Stages get
frozen dataclasses back, never rows. Work is done in batches so memory stays
bounded whatever the number of indexed files.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import threading
import time
from _blake2 import blake2b  # hashlib's, without its import of OpenSSL (a scan's start)
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from dedupd.errors import DedupdError, TemporaryFailure
from dedupd.files.events import NO_DEV, FileEvent, Ident
from dedupd.files.fsid import HostIdentity, host_identity
from dedupd.index.bulk import HEADLESS_MAX, Bulk
from dedupd.index.db import (
    BATCH,
    Db,
    IndexError_,
    chunks,
    from_s64,
    index_failure,
    is_psycopg_error,
    to_s64,
)
from dedupd.index.dirs import DirTree, join, split, subtree_sql
from dedupd.index.fsmap import FsMap, Unreachable
from dedupd.index.held import HeldRows
from dedupd.index.migrate import open_index, put_meta
from dedupd.index.names import Names
from dedupd.index.record import forget_unseen, record_batch, store_digests
from dedupd.tuples import NamedTuple  # typing's class syntax, built ~10x faster (tuples.py)

_tables = itertools.count()  # temporary table names, unique in the process
# A full scan that wrote (new, changed or forgotten files) at least half as many
# rows as the index then holds, and at least this many, is followed by a VACUUM
# of a SQLite index (see Store.compact).
COMPACT_MIN_ROWS = 1000
__all__ = ["BATCH", "IndexError_", "Store", "chunks", "IndexedFile", "HashUpdate",
           "RecordResult", "path_key"]



class IndexedFile(NamedTuple):
    """An inode as the index knows it, with the paths seen in the current scan.
    dev is the current st_dev of its filesystem (the index keeps filesystem ids).
    A NamedTuple (immutable; `_replace` for a changed copy): several are made per
    file of a scan (record, each hashing step), at a quarter of a frozen
    dataclass's cost."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    head: int | None
    full: bytes | None
    unstable: int
    paths: tuple[bytes, ...]

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    @property
    def path(self) -> bytes:
        return self.paths[0]

    @property
    def ident(self) -> Ident:
        """The identity it was indexed (and hashed) at: what a check before acting
        compares a descriptor or a name with."""
        return Ident(self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)


class HashUpdate(NamedTuple):
    dev: int
    ino: int
    head: int | None
    full: bytes | None
    # (size, mtime_ns, ctime_ns) the hashes were read at: when given, a row that
    # moved on meanwhile (re-recorded as changed) is left alone
    stat: tuple[int, int, int] | None = None


class RecordResult(NamedTuple):
    new: int
    changed: int
    unchanged: int
    files: tuple[IndexedFile, ...] = ()  # the batch's inodes, hashes kept when unchanged


def path_key(path: bytes) -> bytes:
    """A fixed-size key of a path (provenance rows): bytes paths may exceed btree key
    limits (PostgreSQL), and a collision-resistant digest keeps crafted names apart."""
    return blake2b(path, digest_size=16).digest()


class Store(Names):
    """The index. Thread-safe: each thread gets its own connection (see db.py).

    host: whose rows this Store reads and writes (default: this machine,
    dedupd.files.fsid.host_identity). Files come in and go out with their current
    st_dev; the index keeps filesystem ids (dedupd/index/fsmap.py).
    """

    def __init__(self, url: str, host: HostIdentity | None = None) -> None:
        self.url = url
        self.db = Db(url)
        self.dialect = self.db.dialect
        self.bulk = Bulk(self.db)
        self.host_identity = host or host_identity(None)
        try:
            self.host = open_index(self.db, self.host_identity)
        except sqlite3.OperationalError as e:
            raise index_failure(url, e) or TemporaryFailure(
                f"index {url}: cannot open: {e}") from None
        except sqlite3.Error as e:
            raise IndexError_(f"index {url}: {e}") from None
        except Exception as e:
            if is_psycopg_error(e):
                raise IndexError_(f"index {url}: {e}") from None
            raise
        self.fsmap = FsMap(self.db, self.host)
        self.dirs = DirTree(self.db, self.host)
        # set when a record or forget may have left an inode without a name
        self.orphans_maybe = False
        # (roots, paths of the directories under them that hold names) of the last
        # known_digests: what finish_scan may skip
        self._listed: tuple[tuple[bytes, ...], set[bytes]] | None = None
        self.compact_due = False  # see finish_scan
        self._written: dict[int, int] = defaultdict(int)  # scan id -> inode rows written
        self._written_lock = threading.Lock()
        # new inode rows held until their hashes come (held.py; a scan with feeders)
        self.held: HeldRows | None = None

    def close(self) -> None:
        self.db.close()

    # --- identity: st_dev <-> filesystem ids (fsmap.py) ---

    def fs_of(self, dev: int, path: bytes) -> int:
        """The filesystem id of device dev, met at path (identified on first sight)."""
        return self.fsmap.fs_of(dev, path, self.dirs.paths)

    def dev_of(self, fs: int, hint: bytes | None = None) -> int | None:
        """The current st_dev of filesystem fs; None when it is not reachable now. hint:
        a directory to look through first (one gone since: the index's directories)."""
        return self.fsmap.dev_of(fs, lambda: hint if hint is not None and os.path.isdir(hint)
                                 and not os.path.islink(hint) else self._probe(fs))

    def _probe(self, fs: int) -> bytes | None:
        """A directory of fs in the index that is a directory now (one renamed or
        removed since must not make the whole filesystem look unreachable). fs 0 (the
        directories that hold no file) is every host's: never resolved here."""
        if fs <= 0:
            return None
        rows = self.db.rows(f"SELECT id FROM directories WHERE fs = {self.db.p} "
                            "ORDER BY id LIMIT 64", (fs,))
        paths = self.dirs.paths([int(r[0]) for r in rows])
        for i in sorted(paths):
            if os.path.isdir(paths[i]) and not os.path.islink(paths[i]):
                return paths[i]
        return None

    def key_of(self, dev: int, ino: int) -> tuple[int, int] | None:
        """(fs, signed ino) of a device already met in this Store, else None."""
        fs = self.fsmap.known_fs(dev)
        return None if fs is None else (fs, to_s64(ino))

    # --- meta: small key/value state of this host (per-volume generations, timestamps) ---

    def get_meta(self, key: str) -> str | None:
        p = self.db.p
        rows = self.db.rows(f'SELECT value FROM meta WHERE host = {p} AND "key" = {p}',
                            (self.host, key))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db.tx() as cur:
            put_meta(self.db, cur, self.host, key, value)

    # --- scans ---

    def begin_scan(self, roots: Sequence[bytes], *, prepared: bool = False) -> int:
        """Open a scan of roots; its id. Raises UnknownFilesystem, before writing
        anything, when a root's filesystem has no identity (fsid.identify).
        prepared: prepare_scan(roots) was called for this pass already (so what it
        read since, such as known_digests, stays cached)."""
        if not prepared:
            self.prepare_scan(roots)
        doc = json.dumps([os.fsdecode(r) for r in roots])
        p = self.db.p
        with self.db.tx() as cur:
            cur.execute(f"INSERT INTO scans (host, started, roots) VALUES ({p}, {p}, {p}) "
                        "RETURNING id", (self.host, time.time(), doc))
            return int(cur.fetchone()[0])

    def prepare_scan(self, roots: Sequence[bytes]) -> None:
        """What begin_scan does before it writes the scan's row: the filesystems'
        devices checked again and the directory cache emptied. Writes nothing."""
        self.fsmap.revalidate()  # mounts may have changed since the last pass
        # another process may have dropped a directory row since (a scan that left it
        # no name) and SQLite given its id to another path: a Store that outlives
        # passes (the daemon's) would record into that row under a cached id
        self.dirs.reset()
        for r in roots:
            self.fsmap.check(r)

    def record(self, scan_id: int, events: Sequence[FileEvent],
               touch_inodes: bool = True, digests: Sequence[tuple[bytes, bytes]] = ()
               ) -> RecordResult:
        """Upsert one batch of walk results; unchanged inodes keep their hashes.

        An inode is unchanged when size, mtime_ns and ctime_ns all match (ctime
        catches writes that preserved mtime). Idempotent for a given scan_id.
        The result lists the batch's inodes as the index now has them.
        touch_inodes=False leaves unchanged inodes' `seen` alone (the caller
        finds its groups without the index, or calls mark_inodes_seen later).
        Raises UnknownFilesystem (nothing of the batch written) when a file's
        filesystem cannot be identified.

        digests: (directory, listing digest) of directories whose every file is
        now recorded (this batch or an earlier one of the scan): stored so that the
        next walk can skip them while they do not change (known_digests). Any other
        directory this batch writes into loses its stored digest.
        """
        events, fss = self._filesystems(events)
        held = self.held  # its lock over the whole transaction (held.py)
        try:
            with held.lock if held is not None else contextlib.nullcontext(), \
                    self.db.tx() as c:
                res = record_batch(self, c, scan_id, events, fss, touch_inodes, digests)
        except BaseException:
            self.dirs.reset()  # ids created in the rolled-back transaction are void
            raise
        with self._written_lock:
            self._written[scan_id] += res.new + res.changed
        return res

    def finish_scan(self, scan_id: int, roots: Sequence[bytes],
                    same: Sequence[bytes] = (), compact: bool = True) -> int:
        """Forget entries under `roots` that this scan did not see, except in the
        directories `same` (skipped by the walk: their listing did not change); drop
        orphan inodes and directories left empty. Returns the number of entries
        forgotten. Entries outside the roots are untouched. A scan that rewrote most
        of a SQLite index compacts it after (compact; with compact=False, only
        `compact_due` is set, for the caller to compact once its last write is done)."""
        p = self.db.p
        listed, self._listed = self._listed, None
        if listed is not None and listed[0] == tuple(roots) and listed[1].issubset(same):
            # every directory under roots that holds a name was skipped unchanged
            # (known_digests, just before this scan's walk): none can have a name to
            # forget, nor be left empty; only roots that are files are looked at
            keep: set[int] = set()
            roots = [r for r in roots if self.dirs.find(r) is None]
        else:
            keep = {d for d in (self.dirs.find(x) for x in same) if d is not None}
        with self.db.tx() as cur:
            n = forget_unseen(self, cur, scan_id, roots, keep)
            if self.orphans_maybe:  # one pass over every name: only when it can find any
                self.drop_orphans(cur)
            cur.execute(f"UPDATE scans SET finished = {p} WHERE id = {p}", (time.time(), scan_id))
        with self._written_lock:
            written = self._written.pop(scan_id, 0) + n
        if written >= COMPACT_MIN_ROWS and self.dialect == "sqlite":
            held = int(self.db.rows("SELECT count(*) FROM inodes")[0][0])
            if 2 * written >= held:
                self.compact_due = True
        if compact and self.compact_due:
            self.compact()
        return n

    def _filesystems(self, events: Sequence[FileEvent]
                     ) -> tuple[Sequence[FileEvent], dict[int, int]]:
        """The events whose filesystem is reachable, and the filesystem id of each
        of their devices (one fs_of call a device, not a file)."""
        fss: dict[int, int] = {}
        lost: set[int] = set()
        for dev in {e.dev for e in events}:
            try:
                fss[dev] = self.fs_of(dev, next(e.path for e in events if e.dev == dev))
            except Unreachable:  # that directory vanished since the walk: try each file's
                lost.add(dev)
        if not lost:
            return events, fss
        kept = []
        for e in events:
            if e.dev in lost and e.dev not in fss:
                try:
                    fss[e.dev] = self.fs_of(e.dev, e.path)
                except Unreachable:
                    continue  # the next scan decides
            kept.append(e)
        return kept, fss

    def hold_new_rows(self) -> None:
        """From now on, record() holds new inode rows a few batches (held.py): hashes
        learnt meanwhile go in with them. release_held() writes what is left."""
        self.held = HeldRows(HEADLESS_MAX)

    def release_held(self, scan_id: int) -> None:
        """Write every row and directory digest still held, and hold no more."""
        held, self.held = self.held, None
        if held is None:
            return
        rows, digests = held.release()
        if not rows and not digests:
            return
        with self.db.tx() as cur:
            if rows:
                self.bulk.upsert_inodes(cur, sorted(rows))  # key order, as record's
            if digests:
                store_digests(self, cur, scan_id, digests)

    def compact(self) -> None:
        """VACUUM a SQLite index: rewrite it with full pages, free pages returned.

        Rows inserted in inode order (not key order) and then widened by their
        hashes leave B-tree pages about 80% full; a scan that wrote most of the
        index (a first scan, or one that forgot most of it) is followed by this,
        which costs about what writing the rows once did (30 ms for 60,000 files;
        the index's size again in temporary disk space while it runs). Best effort:
        a busy or full disk leaves the index as it was, with a warning. PostgreSQL
        reclaims space on its own (autovacuum): nothing to do there."""
        self.compact_due = False
        if self.dialect != "sqlite":
            return
        try:
            self.db.run("VACUUM")
        except (sqlite3.Error, DedupdError) as e:
            import logging  # here: a scan that logs nothing never imports it (cli.py)

            logging.getLogger("dedupd.index").warning("index %s: not compacted: %s",
                                                      self.url, e)

    def mark_inodes_seen(self, scan_id: int) -> None:
        """Set `seen` on every inode with a name seen in this scan (after record(...,
        touch_inodes=False)), so that the size-group queries find them."""
        p = self.db.p
        with self.db.tx() as cur:  # one pass over the names (no index by inode)
            cur.execute(f"UPDATE inodes SET seen = {p} WHERE seen <> {p} AND (fs, ino) IN "
                        "(SELECT d.fs, e.ino FROM entries e JOIN directories d "
                        f"ON d.id = e.dir WHERE e.seen = {p})", (scan_id, scan_id, scan_id))

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

    def finish_incremental(self, scan_id: int, roots: Sequence[bytes],
                           gone: Sequence[bytes] = (), gone_dirs: Sequence[bytes] = (),
                           sizes: Iterable[int] | None = None, min_size: int = 1
                           ) -> tuple[int, Iterator[list[IndexedFile]]]:
        """The one contract of incremental scans (BTRFS generations, ZFS diffs).

        Such a pass sees only what changed: it opens a scan (begin_scan), records
        the changed files (record), forgets what it learnt is gone (the names in
        `gone`, every name below `gone_dirs`; forget_paths may also be called on
        the way), then calls this, which closes the scan and returns (names
        forgotten here, the size groups to hash): every inode under roots whose
        size is in `sizes` (None: every size >= min_size that 2+ inodes under
        roots share), with all its names under roots. It never forgets a name it
        was not told about: finish_scan is for full walks only.
        """
        from dedupd.index.extents import finish_incremental

        return finish_incremental(self, scan_id, roots, gone, gone_dirs, sizes, min_size)

    def known_digests(self, roots: Sequence[bytes]) -> dict[bytes, tuple[bytes, int]]:
        """directory path -> (listing digest stored by the last scan, the current st_dev
        of the filesystem the index has the directory on), under roots. A directory
        whose filesystem is not reachable now is left out; one without a file of its
        own (fs 0: nothing of it in the index but its name) comes with NO_DEV, any
        device: its unchanged listing still has no file to record.

        Remembers which of them hold files, for finish_scan (_listed)."""
        rows = self.dirs.listing(roots)
        self._listed = (tuple(roots), {r[2] for r in rows if r[1] > 0})
        devs = {fs: self.dev_of(fs) if fs > 0 else NO_DEV for fs in {r[1] for r in rows}}
        return {path: (g, dev) for _i, fs, path, g in rows
                if g is not None and (dev := devs[fs]) is not None}

    # --- candidates and hashes ---

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

    def save_hashes(self, updates: Sequence[HashUpdate]) -> None:
        """Store hashes of indexed inodes (others are skipped), whichever Store recorded
        them: a device this Store has not met is mapped first (_fs_of_dev). Of several
        updates of one inode, the last one is written."""
        rows: list[tuple[Any, ...]] = []
        checked: list[tuple[Any, ...]] = []
        # The rows go out in several statements (with or without a stat check, with
        # or without a full hash), not in the order given: an earlier head-only
        # update of an inode would be written after, and erase, its full hash.
        latest = {(u[0], u[1]): u for u in updates}
        fs_of = {dev: self._fs_of_dev(dev) for dev in {k[0] for k in latest}}
        # in key order: each row's B-tree page is met once per batch, not once per row
        for (dev, ino), u in sorted(latest.items()):
            fs = fs_of[dev]
            if fs is None:
                continue
            head, stat = u[2], u[4]
            row = (None if head is None else to_s64(head), u[3], fs, to_s64(ino))
            if stat is None:
                rows.append(row)
            else:
                checked.append((*row, *stat))
        if not rows and not checked:
            return
        with self.db.tx() as cur:
            if rows:
                self.bulk.save_hashes(cur, rows)
            if checked:
                self.bulk.save_hashes(cur, checked, same_stat=True)

    def _fs_of_dev(self, dev: int) -> int | None:
        """The filesystem of device dev met without a path (a hash update): each of this
        host's filesystems not located since the last revalidate is looked for through
        its directories in the index (dev_of) until one is on dev. None: no indexed
        filesystem is (nothing of dev is indexed). Else a process that only hashes
        (the consolidation's index writer) dropped the hashes: the next pass read the
        unchanged files again."""
        fs = self.fsmap.known_fs(dev)
        if fs is not None:
            return fs
        rows = self.db.rows(f"SELECT id FROM filesystems WHERE host = {self.db.p} "
                            "ORDER BY id", (self.host,))
        return next((int(r[0]) for r in rows if self.dev_of(int(r[0])) == dev), None)

    def accept_own_ctimes(self, changes: Sequence[tuple[Ident, Ident]]) -> None:
        """Take the new ctime of inodes that only dedupd's own links changed (before,
        after; applied in order), where the index still holds the before stat: else the
        next pass would count every linked file as changed and read it again."""
        rows = []
        for old, new in changes:
            k = self.key_of(old.dev, old.ino)
            if k is not None:
                rows.append((new.ctime_ns, *k, old.size, old.mtime_ns, old.ctime_ns))
        if rows:
            with self.db.tx() as cur:
                self.bulk.set_ctimes(cur, rows)

    def counts(self) -> dict[str, int]:
        """Rows of this host: inodes, names (paths) and hashed inodes."""
        p, h = self.db.p, (self.host,)
        mine = f"JOIN filesystems f ON f.id = i.fs WHERE f.host = {p}"
        one = self.db.rows
        return {"inodes": int(one(f"SELECT count(*) FROM inodes i {mine}", h)[0][0]),
                "paths": int(one("SELECT count(*) FROM entries e JOIN directories i "
                                 f"ON i.id = e.dir {mine}", h)[0][0]),
                "hashed": int(one(f'SELECT count(*) FROM inodes i {mine} AND i."full" '
                                  "IS NOT NULL", h)[0][0])}


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


def group_rows(rows: Iterable[Any], names: dict[tuple[int, int], list[bytes]],
               dev_of: Callable[[int], int | None]) -> Iterator[list[IndexedFile]]:
    """Rows (fs, ino, size, ...) ordered by size -> one list of IndexedFile per size
    (inodes with no name, or on a filesystem not reachable now, are left out)."""
    group: list[IndexedFile] = []
    for fs, n, size, mt, ct, head, full, unst in rows:
        paths = names.get((fs, n))
        dev = dev_of(fs) if paths else None
        if dev is None or not paths:
            continue
        if group and group[-1].size != size:
            yield group
            group = []
        group.append(IndexedFile(dev, from_s64(n), size, mt, ct,
                                 None if head is None else from_s64(head), full, unst,
                                 tuple(paths)))
    if group:
        yield group
