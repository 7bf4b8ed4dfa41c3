"""The copy phase's index writes, in a forked process beside the copies.

Recording a batch's archive files, hashes and provenance rows is Python-bound
(every row is built in Python) and took about a third of the copy phase's CPU
in the copying process. Here a child with its own connection to the index
writes them while the parent copies the next batch: two cores instead of one.

Contract: `write()` takes one flush (copy records, hash updates, provenance
rows, paths to touch) and returns at once; the child applies the
flushes in the order given, each in that order (files, hashes, rows), exactly
as the parent did itself (the hashes of new archive files go in with their rows:
the same rows). The parent sends a flush only when every name in it
is durable (execute.py), so whatever the child writes is true on disk. If the
parent dies (kill -9), the child sees EOF, writes what it already received and
exits: a crash loses at most the rows not sent, which the next run rebuilds
from the files. Flushes that follow each other within COMMIT_EVERY go in one
transaction (committed then, at the end, or at EOF): a flush of a first import
dirties about a page of each of the provenance B-trees a row (random keys), and
each commit wrote them all to the WAL again; the index's write lock is held that
long at most. A failure rolls back the flushes of its transaction.
`close()` waits for every write and returns the number of provenance rows
written; a failure in the child is raised there (the message is its error,
never a partial success); `end()` before it lets the child write its last
flushes while the parent does something else. After its answer the child
checkpoints the WAL and closes the index while the parent goes on; `wait()` reaps
it. Construct before starting threads (dedupd.forkpipe's rule).
"""

from __future__ import annotations

import contextlib
import select
import sqlite3
import time
from typing import cast

from dedupd import forkpipe
from dedupd.errors import DedupdError
from dedupd.files.events import FileEvent
from dedupd.forkpipe import Wire
from dedupd.index import provenance as prov
from dedupd.index.store import HashUpdate, Store

_new = tuple.__new__  # a NamedTuple's own __new__ is a Python function
# A transaction stays open while flushes keep coming, this long at most: random keys
# (provenance's, path digests) have a flush of rows dirty a page of each of its
# B-trees a row, and each commit writes every page it dirtied (to SQLite's WAL)
COMMIT_EVERY = 0.5
CACHE_KIB = 64 << 10  # SQLite's page cache of the writer's connection (pages of a transaction)
_NEXT = ("next",)  # no flush within the transaction's time: read the next one after it


class WriteFailed(DedupdError):
    """The index writer failed; the copies are in place, their rows are not."""


def apply(store: Store, msg: Wire) -> int:
    """Write one flush (the wire form of IndexWriter.write) in one transaction (the
    caller's, when it has one: Db.tx); return provenance rows. A copy record gives
    its archive file, two hashes and a row (expand), before the flush's other hashes
    and rows. Rows are used as they come: archive files become FileEvents by
    tuple.__new__ (no Python __new__ a row), hash updates stay tuples (save_hashes
    only indexes them), provenance rows go in as fields (prov.save_fields)."""
    scan_id, copies, hashes, rows, name, touch, now = msg
    files: list[FileEvent] = []
    if copies:
        files, c_hashes, c_rows = expand(copies, name, now)
        hashes, rows = c_hashes + hashes, c_rows + rows
    try:
        with store.db.tx():  # record, save_hashes and the rest join it (Db.tx)
            # the update save_hashes would write of each inode: those of new archive
            # files go in with their rows (Store.record), one UPDATE a copy fewer
            latest = {(u[0], u[1]): u for u in hashes}
            if files:
                store.record(scan_id, files, hashes=latest)
            if latest:
                store.save_hashes(cast("list[HashUpdate]", list(latest.values())))
            n = prov.save_fields(store, rows) if rows else 0
            if touch:
                prov.touch(store, name, touch, now)
    except BaseException:
        store.dirs.reset()  # directories made in the rolled-back transaction are void
        raise
    return n


def expand(copies: list[Wire], name: str, now: float
           ) -> tuple[list[FileEvent], list[Wire], list[Wire]]:
    """The rows of copy records (rows.Rows.copied): per copy its archive file, the
    hashes of both inodes (the archive file's first) and its source's provenance row."""
    files: list[FileEvent] = []
    hashes: list[Wire] = []
    rows: list[Wire] = []
    for dest, stw, head, full, src, sdev, sino, ssize, smtime, sctime in copies:
        mode, ino, dev, nlink, uid, gid, size, _atime, mtime, ctime = stw
        files.append(_new(FileEvent, (dest, dev, ino, size, mtime, ctime, mode, uid, gid,
                                      nlink)))
        hashes.append((dev, ino, head, full, None))
        hashes.append((sdev, sino, head, full, None))
        rows.append((name, src, dest, full, ssize, sdev, sino, smtime, sctime, now, now))
    return files, hashes, rows


def _child(inp: int, out: int, url: str) -> None:
    store = Store(url)  # its own connections: none of the parent's is used here
    if store.dialect == "sqlite":
        # a transaction's pages stay in memory until it commits (SQLite's default,
        # 2 MiB, spilled them to the WAL midway, to be written again at the commit)
        store.db.run(f"PRAGMA cache_size = -{CACHE_KIB}")
        # sqlite3 binds int, float and str as they are, but looks for an adapter for
        # any other value (a key tuple built, a dict and two attribute lookups): once
        # per path, key and hash of every row here, 5% of this process's CPU. Found
        # now, bytes(b) is b itself. This process only (the registry is global).
        sqlite3.register_adapter(bytes, bytes)
    written = 0
    msg = forkpipe.recv(inp)
    while msg is not None and msg != "end":
        with store.db.tx():  # several flushes, while they come (module docstring)
            deadline = time.monotonic() + COMMIT_EVERY
            while True:
                written += apply(store, msg)
                if not _waiting(inp, deadline - time.monotonic()):
                    msg = _NEXT
                    break
                msg = forkpipe.recv(inp)
                if msg is None or msg == "end":
                    break
        if msg is _NEXT:
            msg = forkpipe.recv(inp)
    if msg == "end":
        forkpipe.send(out, ("done", written))
        _checkpoint(store)
        # the last connection's close deletes the WAL (25 MB: 10 ms): here, while the
        # run writes its output, when the run closed the index first (cli: Left)
        with contextlib.suppress(Exception):
            store.close()
    # EOF without "end": the parent died; what it sent is written, nothing else to do


def _checkpoint(store: Store) -> None:
    """After the answer, while the run goes on to its report: copy what this process
    wrote from SQLite's WAL into the database, which the run's close of the index did
    otherwise, with nothing beside it (a 20,000-file import: 25 MB, 33 ms). Its rows
    are committed: a failure here loses nothing (the next checkpoint does it)."""
    if store.dialect == "sqlite":
        with contextlib.suppress(sqlite3.Error):
            store.db.run("PRAGMA wal_checkpoint(PASSIVE)")


def _waiting(fd: int, seconds: float) -> bool:
    """Whether a flush comes within `seconds` (at once when nothing is left of them)."""
    return seconds > 0 and bool(select.select([fd], [], [], seconds)[0])


class IndexWriter:
    """Index writes of one copy phase in a child process (module docstring)."""

    def __init__(self, url: str) -> None:
        self.pid, self.to, self.frm = forkpipe.spawn(lambda i, o: _child(i, o, url))
        self._ended = False  # "end" sent (end())
        self._exiting = 0  # answered, still checkpointing (_checkpoint): reaped by wait()

    def write(self, scan_id: int, copies: list[Wire], hashes: list[Wire], rows: list[Wire],
              name: str, touch: list[bytes], now: float) -> None:
        """One flush, in wire form (rows.py builds it): copy records (rows.Rows.copied),
        hashes as HashUpdate's fields, rows as Provenance's, in their order."""
        try:
            forkpipe.send(self.to, (scan_id, copies, hashes, rows, name, touch, now))
        except BrokenPipeError:  # it died (not stdout's EPIPE): close() tells why
            self.close()
            raise WriteFailed("writing the index failed: index writer died") from None

    def end(self) -> None:
        """Say no more flushes come (close() waits for them to be written): the child
        writes what it has meanwhile."""
        if self.pid and not self._ended:
            self._ended = True
            with contextlib.suppress(BrokenPipeError):  # died: close() tells why
                forkpipe.send(self.to, "end")

    def close(self, reap: bool = True) -> int:
        """Wait for every write; the provenance rows written (WriteFailed on failure).
        The process ends after its answer (_checkpoint): reaped here, or with reap
        False by wait(), while the caller goes on."""
        if not self.pid:
            return 0
        msg: Wire = None
        try:
            self.end()
            msg = forkpipe.recv(self.frm)
        except OSError as e:  # the child died: its end of the pipe is gone
            msg = ("err", f"index writer died: {e}")
        finally:
            forkpipe.close(self.to)
            forkpipe.close(self.frm)
            done = isinstance(msg, tuple) and msg[0] == "done"
            if done:  # every row committed, whatever its exit status
                self._exiting = self.pid
            else:
                forkpipe.reap(self.pid)
            self.pid = 0
        if done:
            if reap:
                self.wait()
            return int(msg[1])
        detail = msg[1] if isinstance(msg, tuple) else "index writer died"
        raise WriteFailed(f"writing the index failed: {str(detail).strip().splitlines()[-1]}")

    def wait(self) -> None:
        """Reap the process that answered close() (its checkpoint over)."""
        if self._exiting:
            forkpipe.reap(self._exiting)
            self._exiting = 0

    def abandon(self) -> None:
        """Stop without waiting for an answer (the run is failing anyway): the child
        writes what it received, sees EOF and exits."""
        if self.pid:
            forkpipe.close(self.to)
            forkpipe.close(self.frm)
            forkpipe.reap(self.pid)
            self.pid = 0
        self.wait()
