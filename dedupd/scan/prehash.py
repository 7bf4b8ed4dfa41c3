"""Hashing that starts while the walk is still going.

A one-shot scan used to walk everything, then ask the index for the size
groups, then read. The walk is Python-bound and reading mostly waits on the
kernel (copies and xxhash release the GIL), so the two overlap well: as soon
as a second inode of some size is recorded, both can be read. The rules are
those of Hasher._hash, applied as files arrive: a small size is read whole, a
large one head first and whole only when heads collide. The find pass after
the walk then gets these groups with their hashes filled in and reads nothing
more; it still decides the groups, so correctness does not rest on this.

Memory is bounded: past `limit` inodes the pre-hasher lets go of what it holds
(hashes already read stay in the index) and the find pass falls back to asking
the index for the size groups.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from dedupd.files.events import Problem
from dedupd.hashing import (
    WHOLE_READ,
    GroupReader,
    HashStats,
    HashWriter,
    Stability,
    with_hashes,
)
from dedupd.index.store import HashUpdate, IndexedFile, Store
from dedupd.queuethread import QueueThread

Key = tuple[int, int]
# About 750 bytes an inode held (its record, path, keys and maps): 200,000 took
# a 1M-file scan from 35 MB to 188 MB; 50,000 cost about 40 MB at most.
PREHASH_LIMIT = 50_000


class PreHasher:
    """Reads size-matched files in a thread of its own as batches are recorded.

    put() takes the inodes of one recorded batch (from the record thread);
    close() waits for the reads and returns the size groups (2+ inodes, sizes
    ascending, hashes filled in) or None when it gave up holding them.
    """

    def __init__(self, store: Store, stability: Stability,
                 now: Callable[[], float] = time.time, limit: int | None = None) -> None:
        self.stability, self.now = stability, now
        self.limit = PREHASH_LIMIT if limit is None else limit
        self.stats = HashStats()
        self.files: dict[Key, IndexedFile] = {}
        self.sizes: dict[int, list[Key]] = {}
        self.heads: dict[tuple[int, int], list[Key]] = {}  # (size, head) -> large inodes
        self.gone: set[Key] = set()  # left out of the groups
        self.overflow = False
        self.reader = GroupReader(self.stats)
        self.writer = HashWriter(store)
        self.thread: QueueThread[Sequence[IndexedFile]] = QueueThread(self._add, "prehash", 4)

    def put(self, files: Sequence[IndexedFile]) -> None:
        self.thread.put(files)

    def close(self) -> list[list[IndexedFile]] | None:
        """Wait for the reads; raise the thread's error, if any; return the groups."""
        self.thread.close()
        self.writer.flush()
        if self.overflow:
            return None
        groups = []
        for size in sorted(self.sizes):
            keys = [k for k in self.sizes[size] if k not in self.gone]
            if len(keys) > 1:
                groups.append([self.files[k] for k in sorted(keys)])
        return groups

    def _add(self, batch: Sequence[IndexedFile]) -> None:
        if self.overflow:
            return
        now = self.now()
        heads: list[IndexedFile] = []  # large files that need their head read
        wholes: list[IndexedFile] = []  # files that need a full read
        for f in batch:
            if f.size == 0:
                continue
            known = self.files.get(f.key)
            if known is not None:  # another name of an inode seen in an earlier batch
                if _stat(known) != _stat(f) and f.key not in self.gone:
                    self.gone.add(f.key)  # written to since: leave it for a later scan
                    self.stats.problems.append(Problem(f.path, "changed",
                                                       "changed during the scan"))
                paths = tuple(sorted(set(known.paths) | set(f.paths)))
                self.files[f.key] = replace(known, paths=paths)
                continue
            self.files[f.key] = f
            members = self.sizes.setdefault(f.size, [])
            members.append(f.key)
            if len(members) < 2:
                continue
            # a size now shared: the first inode of it needs reading too
            for k in (members if len(members) == 2 else members[-1:]):
                m = self.files[k]
                if not self.stability.ready(m, now):
                    continue
                if m.size <= WHOLE_READ:
                    if m.full is None:
                        wholes.append(m)
                elif m.head is None:
                    heads.append(m)
                else:
                    self._collide(m, wholes)
        if len(self.files) > self.limit:
            self._let_go()
            return
        failed = {f.key for f in heads + wholes}
        # self.files[...]: a later name of the inode in this batch may have added a path
        for f, (head, _) in self.reader.read_all(heads, full=False):
            failed.discard(f.key)
            self._learn(with_hashes(self.files[f.key], head, None))
            self._collide(self.files[f.key], wholes)
        failed.update(f.key for f in wholes)
        for f, (head, full) in self.reader.read_all(wholes, full=True):
            failed.discard(f.key)
            self._learn(with_hashes(self.files[f.key], head, full))
        # Vanished, changed or unreadable: the problem is reported once, here,
        # and the inode leaves its group (the index forgets the first two kinds).
        self.gone |= failed
        self.writer.put((), self.reader.gone)
        self.reader.gone = []

    def _collide(self, f: IndexedFile, wholes: list[IndexedFile]) -> None:
        """Note a large inode's head; when it matches another's, both need a full read."""
        assert f.head is not None
        same = self.heads.setdefault((f.size, f.head), [])
        same.append(f.key)
        if len(same) == 1:
            return
        for k in (same if len(same) == 2 else same[-1:]):
            if self.files[k].full is None:
                wholes.append(self.files[k])

    def _learn(self, f: IndexedFile) -> None:
        self.files[f.key] = f
        # stat-checked: the record thread may meanwhile have re-recorded this inode
        # as changed (another name of it, later in the walk), and its row must not
        # get hashes of what it was
        self.writer.put((HashUpdate(f.dev, f.ino, f.head, f.full, _stat(f)),))

    def _let_go(self) -> None:
        self.overflow = True
        self.files, self.sizes, self.heads, self.gone = {}, {}, {}, set()
        self.reader.counted = set()


def _stat(f: IndexedFile) -> tuple[int, int, int]:
    return (f.size, f.mtime_ns, f.ctime_ns)
