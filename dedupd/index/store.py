"""Store: every query the index answers, behind one class.

Split by role: name queries (names.py), size-group queries (groups.py) and the
tuples handed to the stages (rows.py) are in their own modules; Store holds the
filesystem identities, the scans' lifecycle and hashes.

Blocking (plain DB-API, dedupd/index/db.py): the daemon calls it from worker
threads. Stages get immutable tuples (rows.py) back, never rows. Work is done in
batches so memory stays bounded whatever the number of indexed files.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
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
    index_failure,
    is_psycopg_error,
    to_s64,
)
from dedupd.index.dirs import DirTree
from dedupd.index.fsmap import FsMap, Unreachable
from dedupd.index.groups import SizeGroups
from dedupd.index.held import HeldRows
from dedupd.index.migrate import open_index, put_meta
from dedupd.index.names import Names
from dedupd.index.record import forget_unseen, record_batch, store_digests
from dedupd.index.rows import HashUpdate, IndexedFile, RecordResult, group_rows, path_key
from dedupd.index.scanrow import ScanRow, id_of

# A full scan that wrote (new, changed or forgotten files) at least half as many
# rows as the index then holds, and at least this many, is followed by a VACUUM
# of a SQLite index (see Store.compact).
COMPACT_MIN_ROWS = 1000
# ... when its pages are over COMPACT_ABOVE bytes a file: VACUUM costs about what
# writing the rows did, for the ~10% a scan's B-trees leave unused (89-90% full, on
# bench_scan's two trees alike): under #13's budget (100 bytes a file) it does not pay
COMPACT_ABOVE = 95
_PAGES = "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()"
# IndexedFile, HashUpdate, RecordResult, path_key and group_rows live in rows.py;
# they are named here too, where every stage has imported them from
__all__ = ["BATCH", "IndexError_", "Store", "chunks", "IndexedFile", "HashUpdate",
           "RecordResult", "group_rows", "path_key"]


class Store(Names, SizeGroups):
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
        """(fs, signed ino) of an inode of device dev; None when no filesystem of this
        host in the index is on dev (a device not met yet is looked for: _fs_of_dev)."""
        fs = self._fs_of_dev(dev)
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
               touch_inodes: bool = True, digests: Sequence[tuple[bytes, bytes]] = (),
               hashes: dict[tuple[int, int], Sequence[Any]] | None = None) -> RecordResult:
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

        hashes: (dev, ino) -> the HashUpdate save_hashes is to write next. A batch of
        inodes none indexed (and none held) puts those at the event's stat (or none)
        in its new rows and takes them out (save_hashes of the rest: the same rows).
        """
        events, fss = self._filesystems(events)
        held = self.held  # its lock over the whole transaction (held.py)
        try:
            with held.lock if held is not None else contextlib.nullcontext(), \
                    self.db.tx() as c:
                self.dirs.drop_stale(c)
                res = record_batch(self, c, scan_id, events, fss, touch_inodes, digests,
                                   hashes)
        except BaseException:
            self.dirs.reset()  # ids created in the rolled-back transaction are void
            raise
        with self._written_lock:
            self._written[scan_id] += res.new + res.changed
        return res

    def finish_scan(self, scan: int | ScanRow, roots: Sequence[bytes],
                    same: Sequence[bytes] = (), compact: bool = True) -> int:
        """Forget entries under `roots` that this scan did not see, except in the
        directories `same` (skipped by the walk: their listing did not change); drop
        orphan inodes and directories left empty. Returns the number of entries
        forgotten. Entries outside the roots are untouched. A scan that rewrote most
        of a SQLite index over COMPACT_ABOVE bytes a file compacts it (with compact=False, only
        `compact_due` is set, for the caller to compact once its last write is done).
        A scan given by its ScanRow that wrote nothing and has nothing to forget
        writes nothing here either (its row stays unwritten)."""
        p = self.db.p
        listed, self._listed = self._listed, None
        if listed is not None and listed[0] == tuple(roots) and listed[1].issubset(same):
            # every directory under roots that holds a name was skipped unchanged
            # (known_digests, just before this scan's walk): none can have a name to
            # forget, nor be left empty; only roots that are files are looked at
            keep: set[int] = set()
            roots = [r for r in roots if self.dirs.find(r) is None]
            if not roots and not self.orphans_maybe and isinstance(scan, ScanRow) \
                    and not scan.written:
                return 0
        else:
            keep = {d for d in (self.dirs.find(x) for x in same) if d is not None}
        scan_id = id_of(scan)
        with self.db.tx() as cur:
            self.dirs.drop_stale(cur)
            n = forget_unseen(self, cur, scan_id, roots, keep)
            if self.orphans_maybe:  # one pass over every name: only when it can find any
                self.drop_orphans(cur)
            cur.execute(f"UPDATE scans SET finished = {p} WHERE id = {p}", (time.time(), scan_id))
        with self._written_lock:
            written = self._written.pop(scan_id, 0) + n
        if written >= COMPACT_MIN_ROWS and self.dialect == "sqlite":
            held = int(self.db.rows("SELECT count(*) FROM inodes")[0][0])
            if 2 * written >= held and self.db.rows(_PAGES)[0][0] > COMPACT_ABOVE * held:
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

    def release_held(self, scan: int | ScanRow) -> None:
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
                store_digests(self, cur, id_of(scan), digests)

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

    # --- hashes ---

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
        filesystem is (nothing of dev is indexed; remembered until the next pass, so
        a batch of such keys looks once). Else a process that only hashes (the
        consolidation's index writer) dropped the hashes, and one that only forgets
        or links (key_of) left the rows as they were."""
        fs = self.fsmap.known_fs(dev)
        if fs is not None or dev in self.fsmap.absent:
            return fs
        rows = self.db.rows(f"SELECT id FROM filesystems WHERE host = {self.db.p} "
                            "ORDER BY id", (self.host,))
        fs = next((int(r[0]) for r in rows if self.dev_of(int(r[0])) == dev), None)
        if fs is None:
            self.fsmap.absent.add(dev)
        return fs

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
