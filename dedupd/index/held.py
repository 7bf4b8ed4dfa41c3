"""New inode rows held back a few batches, so that their hashes go in with them.

A first scan records each file's inode row, and then, once the feeders have read
it, writes its hashes: an INSERT and an UPDATE per file read, with the UPDATE's
B-tree search, row rewrite and trigger check (the real tree of docs/schema.md:
0.16 s of SQLite and 0.12 s of Python for 49,000 UPDATEs). Most files are read
within a batch or two of their own (a second member of their size is usually
near), so a new row waits LAG record batches: the hashes learnt meanwhile are
filled into it (HashWriter.put) and it is written once, whole. Rows whose hashes
come later get the UPDATE as before.

Crash safety: a row is held only in memory, while its name is already in
`entries`. A name without an inode row is recorded as new by the next scan (its
directory is listed again), as long as that directory's listing digest was not
stored: so the digests of a batch are held with its rows and stored in the
transaction that writes the last of them. Nothing is held on a filesystem whose
inode numbers are made up at each mount (its rows may exist under another name;
record.py decides those with the index).

Threads: the record thread holds and writes rows; the hashes come from the same
thread (forked feeders) or from the feeder's own (FEED_PROCS = 0). Every method holds
`lock`, and Store.record holds it over its whole transaction: a hash is
put into a row either before the row is taken to be written (it goes in with it) or
after that row's INSERT is committed (it is returned, for the index's UPDATE, which
then finds the row). The scan's thread takes the rest (`Store.release_held`) once
the feeders are done.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from dedupd.index.db import to_s64

if TYPE_CHECKING:
    from dedupd.index.store import HashUpdate

LAG = 4  # record batches a new row waits for its hashes (see the module docstring)
# an inode row as Bulk.upsert_inodes takes it: fs, ino, size, mtime_ns, ctime_delta,
# head, full, seen, unstable (a list: its hashes are filled in place)
Row = list[Any]
HEAD, FULL = 5, 6


class HeldRows:
    def __init__(self, headless_max: int) -> None:
        self.headless_max = headless_max
        self.rows: dict[tuple[int, int], Row] = {}  # by (dev, ino), as the feeders key
        self.batches: deque[tuple[int, list[tuple[int, int]]]] = deque()
        self.digests: deque[tuple[int, Sequence[tuple[bytes, bytes]]]] = deque()
        self.filled: list[tuple[int, int]] = []  # keys whose hashes came since the flush
        self.seq = 0
        self.forgot = False  # an inode was found gone: no digest is stored any more
        self.lock = threading.RLock()  # see the module docstring

    def next_batch(self, keys: Iterable[tuple[int, int]]) -> list[Row]:
        """Start a record batch (the (dev, ino) of its files): the held rows to write
        in its transaction: those of its own inodes (another name of one met before:
        a hardlink, or a directory moved during the scan; so that the batch finds
        them), those whose hashes came, and those LAG batches old. The caller holds
        `lock` until the transaction that writes them is committed."""
        with self.lock:
            self.seq += 1
            rows = self.rows
            out = [rows.pop(k) for k in rows.keys() & keys] if rows else []
            for k in self.filled:
                r = rows.pop(k, None)
                if r is not None:
                    out.append(r)
            self.filled = []
            while self.batches and self.batches[0][0] <= self.seq - LAG:
                for k in self.batches.popleft()[1]:
                    r = rows.pop(k, None)
                    if r is not None:
                        out.append(r)
            return out

    def hold(self, rows: dict[tuple[int, int], Row]) -> None:
        """The new rows of the current batch, by (dev, ino)."""
        with self.lock:
            self.rows.update(rows)
            self.batches.append((self.seq, list(rows)))

    def defer(self, digests: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The current batch's directory digests, held while a row of theirs may be;
        returns the digests now safe to store (all rows of their batch written)."""
        with self.lock:
            if self.forgot:
                return []
            if digests:
                self.digests.append((self.seq, digests))
            out: list[tuple[bytes, bytes]] = []
            while self.digests and self.digests[0][0] <= self.seq - LAG:
                out += self.digests.popleft()[1]
            return out

    def fill(self, updates: Iterable[HashUpdate]) -> list[HashUpdate]:
        """Put hashes into the held rows they belong to (a later update of an inode
        replaces an earlier one, as Store.save_hashes does); the others are returned,
        for the index. A stat-checked update of another stat than the row's is
        dropped: the UPDATE would match no row either."""
        with self.lock:
            rest: list[HashUpdate] = []
            rows, filled, headless_max = self.rows, self.filled, self.headless_max
            for u in updates:  # once per file read: one key built, no stat tuple
                key = (u[0], u[1])
                r = rows.get(key)
                if r is None:
                    rest.append(u)
                    continue
                stat = u[4]
                if stat is not None and (stat[0] != r[2] or stat[1] != r[3]
                                         or stat[2] != r[3] + r[4]):
                    continue
                head, full = u[2], u[3]
                r[HEAD] = None if head is None or (full is not None and r[2] <= headless_max) \
                    else to_s64(head)
                r[FULL] = full
                filled.append(key)
            return rest

    def drop(self, keys: Iterable[tuple[int, int]]) -> None:
        """Inodes found gone: their rows are not written (Store.forget drops the names,
        and its filesystem's digests, so that their directories are listed again). No
        digest held now or later in this scan is stored: it may be a directory's that
        lost such a name, stored after the forgetting, while the directory may list
        the same again (moved away during the read and back: the next scans would skip
        it and never index the file again)."""
        with self.lock:
            for k in keys:
                self.rows.pop(k, None)
                self.forgot = True
            if self.forgot:
                self.digests.clear()

    def release(self) -> tuple[list[Row], list[tuple[bytes, bytes]]]:
        """Every row and digest still held."""
        with self.lock:
            rows = list(self.rows.values())
            digests = [d for _, ds in self.digests for d in ds]
            self.rows, self.filled = {}, []
            self.batches.clear()
            self.digests.clear()
            return rows, digests
