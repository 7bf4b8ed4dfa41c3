"""The index's plain DB-API connection: what Store's queries run on.

SQLAlchemy costs about 0.25 s to import, more than a whole unchanged rescan of
thousands of files should take, so Store speaks plain SQL (the common subset of
SQLite >= 3.24 and PostgreSQL; only the placeholder differs) through sqlite3 or
psycopg. Every module of the index speaks it (docs/schema.md, "One query
style"); no runtime path imports SQLAlchemy, which only generates ddl.py.

One connection per thread, re-opened in a forked child (a connection must not
cross fork). Connections are in autocommit mode; tx() brackets writes, and takes
the index's one write lock up front (SQLite: BEGIN IMMEDIATE; PostgreSQL: an
advisory lock, WRITE_LOCK), so that write transactions run one at a time on
both: a read-then-write transaction waits for a busy writer instead of failing,
and two writers never deadlock (see WRITE_LOCK).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from dedupd.errors import DedupdError, TemporaryFailure

# Every table of schema.py (a test keeps the two equal): all present means
# there is nothing to create.
TABLES = ("meta", "hosts", "filesystems", "scans", "directories", "entries", "inodes",
          "provenance", "ops", "backups", "extent_done", "extent_refs", "answers")
BUSY_TIMEOUT_MS = 30000
BATCH = 1000  # keys per IN (...) query; well under SQLite's variable limit
SCHEMA_VERSION = 5
# PostgreSQL advisory lock key that every tx() takes first ("dedupw" in ASCII). Row
# locks alone let concurrent writers deadlock (40P01, one of them fails): a scan's
# batch upserts inode rows and then stores directory digests, while finish_scan
# clears digests and then deletes orphan inodes (tables in opposite orders); a
# batch upserts inodes in walk order, save_hashes in key order, a DELETE or UPDATE
# over a join in heap order; the hash_epoch triggers lock a meta row midway. Taken
# before any other lock and held to COMMIT, it leaves no cycle among transactions
# (as SQLite's one writer); autocommit statements take only their own row locks.
WRITE_LOCK = 0x646564757077


class IndexError_(DedupdError):
    """The index cannot be opened or queried."""


# The index stores 64-bit unsigned numbers (inodes, head hashes) as signed BIGINTs.
# Hot loops inline to_s64 as `x - U64 if x >= S64 else x` (a call a file costs more).
S64, U64 = 1 << 63, 1 << 64


def to_s64(x: int) -> int:
    return x - U64 if x >= S64 else x


def from_s64(x: int) -> int:
    return x + U64 if x < 0 else x


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    """items in slices of at most n (bound parameters per statement are limited)."""
    for k in range(0, len(items), n):
        yield items[k : k + n]


def run_schema(cur: Any, dialect: str, wanted: Callable[[str], bool] | None = None) -> None:
    """Run the index's schema statements (ddl.py, in their order; each IF NOT EXISTS or
    OR REPLACE) that `wanted` picks, all by default: an upgrade runs them all, and a
    feature added since an index was made runs its own when it is first needed."""
    from dedupd.index.ddl import SCHEMA_DDL  # only then: a rescan never needs it

    for stmt in SCHEMA_DDL[dialect]:
        if wanted is None or wanted(stmt):
            cur.execute(stmt)


def sqlite_path(url: str) -> str | None:
    """The file of a sqlite:/// URL; None for other databases."""
    if not url.startswith("sqlite:"):
        return None
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    if not path or path.startswith(":memory:"):
        # Each thread (and each forked child) has its own connection: an
        # in-memory database would be a different one for each.
        raise IndexError_(f"cannot use database URL {url!r}: the index must be a file "
                          "(sqlite:///PATH)")
    return path


def sqlite_pragmas(c: Any) -> None:
    """Settings every connection to a SQLite index gets."""
    # synchronous before journal_mode: switching a new file to WAL is then
    # one sync fewer (measured with strace: 7 fdatasync instead of 8).
    for pragma in ("synchronous=NORMAL", "journal_mode=WAL", f"busy_timeout={BUSY_TIMEOUT_MS}",
                   # Checkpoint every 32 MiB of WAL, not 4: each checkpoint syncs the
                   # database file, and a scan rewrites the same index pages many times.
                   "wal_autocheckpoint=8192"):
        c.execute(f"PRAGMA {pragma}")


def index_failure(url: str, e: BaseException) -> DedupdError | None:
    """A one-line error for a failure of the storage under the index, else None.

    SQLite reports a read-only file, an immutable one (chattr +i: it opens it
    read-only and then refuses writes alike), a read-only mount and a full disk
    only as message text, at the first write: those are the user's to fix, not
    bugs. A full disk is temporary (exit 75); the others fail (exit 1) and say
    what to look at. A wrapped driver error (`.orig`) is looked through.
    """
    orig = getattr(e, "orig", None) or e
    if not isinstance(orig, sqlite3.Error | OSError):
        return None
    msg = str(orig).lower()
    err = getattr(orig, "errno", None)
    where = url[len("sqlite:///"):] if url.startswith("sqlite:///") else url
    full = "disk is full" in msg or err in (errno.ENOSPC, errno.EDQUOT)
    if not full and ("disk i/o error" in msg or "unable to open" in msg):
        full = _no_space(where)  # SQLite says only "disk I/O error" when the WAL cannot grow
    if full:
        return TemporaryFailure(f"index {where}: the disk is full ({orig}); free some space "
                                "and retry")
    if "readonly" in msg or "read-only" in msg or err in (
            errno.EROFS, errno.EPERM, errno.EACCES) or (
            "unable to open" in msg and _not_writable(where)):
        return IndexError_(f"index {where} cannot be written ({orig}): check its permissions "
                           "and those of its directory, `lsattr` (chattr +i), and whether its "
                           "filesystem is mounted read-only")
    if "unable to open" in msg or "disk i/o error" in msg:
        return IndexError_(f"index {where}: {orig} (is its directory writable, its disk "
                           "full or failing?)")
    return None


def _no_space(path: str) -> bool:
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return False
    return st.f_bavail == 0 or (st.f_files > 0 and st.f_favail == 0)


def _not_writable(path: str) -> bool:
    """The index file or its directory refuses writes (mode, chattr +i, ro mount);
    access() asks the kernel, which knows all three, also for root."""
    d = os.path.dirname(path) or "."
    return any(os.path.exists(p) and not os.access(p, os.W_OK) for p in (path, d))


def is_psycopg_error(e: BaseException) -> bool:
    """Whether e comes from the PostgreSQL driver (without importing it for SQLite)."""
    return type(e).__module__.startswith("psycopg")


def _private_file(path: str) -> None:
    """Create a missing SQLite index file 0600 (its directory 0700 when made here):
    it names every file of every volume, those under other users' private directories
    too, with their hashes. SQLite gives -wal and -shm the database file's mode. An
    existing file keeps the mode it has."""
    where = os.path.dirname(os.path.abspath(path))  # not pathlib: 3 ms of a scan
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
    except OSError as e:
        raise IndexError_(f"cannot create the index directory {where}: "
                          f"{e.strerror}") from None
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        for p in (path, path + "-wal", path + "-shm"):
            _close_to_others(p, path)
    except OSError:
        pass  # not creatable: sqlite3.connect reports it


def _close_to_others(path: str, index: str) -> None:
    """An index file (or its -wal, -shm) that every user may read (an older release's:
    0644, the umask's) loses the others' permissions, with a warning; one that cannot
    be changed (not ours) is only warned about. The group's are left: granted to a
    group of readers, maybe, and not given by default to anyone but the owner's."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode) or not mode & 0o007:
        return
    import logging  # here: only when there is something to say (a scan's start, cli.py)

    log = logging.getLogger("dedupd.index")
    try:
        # never through a symlink: one at `-shm` would have root chmod its target
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            now = os.fstat(fd)
            if stat.S_ISREG(now.st_mode):
                os.fchmod(fd, stat.S_IMODE(now.st_mode) & ~0o007)
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("index %s is readable by every user (mode %04o) and cannot be changed "
                    "here (%s): run `chmod o-rwx %s`", index, mode, e.strerror, path)
        return
    log.warning("index %s was readable by every user (mode %04o; made by an older release?): "
                "%s is now %04o", index, mode, os.path.basename(path), mode & ~0o007)


class Db:
    """DB-API connections to one index database, one per thread and process."""

    def __init__(self, url: str) -> None:
        self.url = url
        path = sqlite_path(url)
        if path is None and not url.startswith(("postgresql://", "postgresql+psycopg://")):
            raise IndexError_(f"cannot use database URL {url!r}: expected sqlite:///FILE "
                              "or postgresql://...")
        self.sqlite = path
        self.dialect = "sqlite" if path is not None else "postgresql"
        self.p = "?" if path is not None else "%s"  # the driver's placeholder
        self._local = threading.local()
        self._inherited: list[Any] = []
        # Every connection opened in this process, with its thread: a sqlite3
        # connection is in a reference cycle (its statement cache), so one that
        # is not closed keeps its 3 fds until the garbage collector runs.
        self._opened: list[tuple[int, threading.Thread, Any]] = []
        self._opened_lock = threading.Lock()
        if path is not None:
            _private_file(path)

    def conn(self) -> Any:
        c = getattr(self._local, "conn", None)
        if c is not None:
            if self._local.pid == os.getpid():
                return c
            # Inherited across fork: never used nor closed here (SQLite forbids
            # both), only kept from being garbage-collected, which closes it.
            self._inherited.append(c)
        c = self._connect()
        self._local.conn, self._local.pid = c, os.getpid()
        with self._opened_lock:
            self._close_ended()
            self._opened.append((os.getpid(), threading.current_thread(), c))
        return c

    def _close_ended(self, this_thread: bool = False) -> None:
        """Close this process's connections of threads that ended (and this thread's
        with this_thread); the caller holds _opened_lock."""
        me, pid, kept = threading.current_thread(), os.getpid(), []
        for entry in self._opened:
            owner, t, c = entry
            if owner != pid:  # inherited across fork: the parent's, never closed here
                kept.append(entry)
            elif (this_thread and t is me) or not t.is_alive():
                with suppress(Exception):
                    c.close()
            else:
                kept.append(entry)
        self._opened[:] = kept

    def _connect(self) -> Any:
        try:
            if self.sqlite is not None:
                c = sqlite3.connect(self.sqlite, isolation_level=None,
                                    check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
                sqlite_pragmas(c)
                return c
            import psycopg

            url = self.url.replace("postgresql+psycopg://", "postgresql://", 1)
            return psycopg.connect(url, autocommit=True)
        except sqlite3.OperationalError as e:
            raise index_failure(self.url, e) or TemporaryFailure(
                f"index {self.url}: cannot open: {e}") from None
        except Exception as e:
            if is_psycopg_error(e):
                raise TemporaryFailure(f"index {self.url}: cannot open: {e}") from None
            raise

    def close(self) -> None:
        """Close this thread's connection and those of threads that ended (a live
        thread's closes at the next close or connection after it ends)."""
        with self._opened_lock:
            self._close_ended(this_thread=True)
        self._local.conn = None

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor, closed after; a read-only, full or locked index's sqlite3 error
        becomes its one-line error (index_failure)."""
        cur = self.conn().cursor()
        try:
            yield cur
        except sqlite3.Error as e:
            fail = index_failure(self.url, e)
            if fail is None:
                raise
            raise fail from None
        finally:
            cur.close()

    @contextmanager
    def tx(self) -> Iterator[Any]:
        """A cursor inside one transaction, the only one writing the index while it
        runs (WRITE_LOCK): committed on success, rolled back on error.

        Inside another tx() of the same thread, the cursor of that one: its writes
        commit or roll back with the outer transaction (the consolidation's index
        writer puts a whole flush in one). An error in such a block must reach the
        outer one: caught and ignored inside, what the block wrote would stay."""
        outer = getattr(self._local, "tx", None)
        if outer is not None and outer[0] == os.getpid():
            yield outer[1]
            return
        with self._cursor() as cur:
            cur.execute("BEGIN IMMEDIATE" if self.sqlite is not None else "BEGIN")
            self._local.tx = (os.getpid(), cur)
            try:
                if self.sqlite is None:
                    cur.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
                yield cur
            except BaseException:
                # After SQLITE_FULL and friends SQLite may have rolled back already:
                # a failing ROLLBACK must not hide the error that caused it.
                with suppress(Exception):
                    cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                self._local.tx = None

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read (autocommit: no transaction stays open)."""
        with self._cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement that returns no rows, in autocommit (temporary tables)."""
        with self._cursor() as cur:
            cur.execute(sql, params)

    def marks(self, n: int) -> str:
        """n placeholders, comma-separated, for IN (...) and VALUES (...)."""
        return ",".join([self.p] * n)

    def missing_tables(self) -> list[str]:
        if self.sqlite is not None:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            sql = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        have = {r[0] for r in self.rows(sql)}
        return [t for t in TABLES if t not in have]
