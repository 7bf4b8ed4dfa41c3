"""Carry out a plan: verified copies, byte-compared confirmations, provenance rows.

Index writes are batched (every FLUSH_EVERY files): a crash loses at most the
rows of one batch, and the next run rebuilds them from the files themselves
(the copies are already in the archive; they are found and byte-compared).

Copies go in batches (BATCH_FILES / BATCH_BYTES, and at most a third of the
open-file limit: each staged copy holds its temp file and its source open until
placed): stage every copy of the batch to a temp name, one syncfs (then the
batch's temp files are dropped from the cache and read ahead together), then
per file compare + link into place. The index rows of a batch are handed to
the index writer (consolidate/writer.py, a forked process on the other core)
after the next sync (the next batch's, or the last one at the end): that sync
makes its new names durable first, so the index never names a copy a crash
could lose, at one syncfs per batch. Each source is read once for its copy:
the bytes stay in memory for the verify of the copy and for the byte compare
of the content's other source paths (see fsops/copy.py).

Test hook: when the environment variable DEDUPD_TEST_KILL_AFTER_COPY_STEPS=k
is set, the process SIGKILLs itself right after the k-th copy step. Steps,
five per copied file: "written" for each file of a batch, then "synced" for
each, then "verified", "placed", "queued" file by file. The kill -9 tests use
it to stop a run at every interesting point. DEDUPD_TEST_COPY_BATCH_FILES=b
makes batches of b files, so those tests can cross batch boundaries with a few.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dedupd.consolidate.compare import Compared, same_as_data, same_bytes
from dedupd.consolidate.inventory import Content, SourcePath, Unsorted
from dedupd.consolidate.plan import Copy, Known, Names, Plan
from dedupd.consolidate.sortcopy import NewCopy, sort_group
from dedupd.consolidate.writer import IndexWriter
from dedupd.files.events import FileEvent, Problem
from dedupd.fsops.copy import (
    CopyError,
    CopyResult,
    DestDirs,
    Staged,
    discard,
    place_copy,
    stage_copy,
    sync_batch,
    sync_filesystem,
)
from dedupd.index.provenance import Provenance
from dedupd.index.store import HashUpdate, IndexedFile, Store

KILL_ENV = "DEDUPD_TEST_KILL_AFTER_COPY_STEPS"
BATCH_ENV = "DEDUPD_TEST_COPY_BATCH_FILES"
FLUSH_EVERY = 256
MAX_RETRIES = 20
# One filesystem sync per batch (see fsops/copy.py): bounded so a crash redoes little.
BATCH_FILES = 1024
BATCH_BYTES = 64 << 20

CopyProgress = Callable[[int, int, int, int], None]  # files done/total, bytes done/total


@dataclass
class Counters:
    files_copied: int = 0
    bytes_copied: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    files_confirmed: int = 0  # source paths byte-compared against the archive
    files_unchanged: int = 0  # source paths whose provenance row was still valid
    rows_written: int = 0
    contents_sorted: int = 0  # distinct contents found in unsorted size groups
    problems: list[Problem] = field(default_factory=list)


class _KillHook:
    """The documented test-only SIGKILL after the k-th copy step (see module doc)."""

    def __init__(self) -> None:
        raw = os.environ.get(KILL_ENV, "")
        self.after = int(raw) if raw.isdigit() else 0
        self.steps = 0

    def __call__(self, _step: str) -> None:
        self.steps += 1
        if self.after and self.steps >= self.after:
            os.kill(os.getpid(), signal.SIGKILL)


class Executor:
    """Runs one plan against the archive; the caller holds the archive lock."""

    def __init__(self, store: Store, name: str, scan_id: int, plan: Plan, archive: bytes,
                 on_name_collision: str, progress: CopyProgress | None = None,
                 new_copy: NewCopy | None = None) -> None:
        """new_copy names the contents found in plan.unsorted (plan.new_copy)."""
        self.store, self.name, self.scan_id, self.plan = store, name, scan_id, plan
        self._new_copy: NewCopy = new_copy or _no_new_copy
        self.archive = archive
        self._done_files = self._done_bytes = 0
        self._bytes_total = plan.bytes_to_copy
        self._unsorted_left = sum(u.inodes for u in plan.unsorted)
        self.policy = on_name_collision
        self.progress = progress
        self.c = Counters()
        self.kill = _KillHook()
        self._rows: list[Provenance] = []
        self._events: list[FileEvent] = []
        self._hashes: list[HashUpdate] = []
        self._touch: list[bytes] = []
        self._unsynced = False  # names placed since the last sync (their rows wait)
        self._now = time.time()
        # (source path, archive file) pairs whose equality is confirmed: prune candidates
        self.confirmed: list[tuple[SourcePath, bytes]] = []
        self.collided: list[SourcePath] = []

    def run(self, names: Names,
            replan: Callable[[list[SourcePath]], None] | None = None) -> Counters:
        """Confirm known contents, then copy. Sources that turn out to differ from every
        archive file of their hash group go to `replan`, which adds copies to the plan
        (rounds repeat while copies reveal more of them)."""
        self._writer = IndexWriter(self.store.url)  # forked before any thread of ours
        try:
            self._run(names, replan)
        except BaseException:
            self._writer.abandon()
            raise
        self.c.rows_written += self._writer.close()
        return self.c

    def _run(self, names: Names, replan: Callable[[list[SourcePath]], None] | None) -> None:
        for k in self.plan.known:
            self._confirm(k)
        start = 0
        items: list[Copy | Unsorted] = [*self.plan.unsorted]  # sorted once, after the rest
        while True:
            if self.collided and replan is not None:
                replan(self.collided)
                self.collided = []
                self._bytes_total = self.plan.bytes_to_copy
            self._copy_all([*self.plan.copies[start:], *items], names)
            items = []
            start = len(self.plan.copies)  # copies sorted from the groups included
            if not self.collided or replan is None:
                break
        self._tick()
        if self._unsynced:
            sync_filesystem(self.archive)  # the last batch's names, before its rows
            self._unsynced = False
        self.flush()

    def _copy_all(self, items: list[Copy | Unsorted], names: Names) -> None:
        """Stage the items into batches of what is really staged (a group staged whole
        may pass the limits by its own new contents), each finished by _finish_batch."""
        raw = os.environ.get(BATCH_ENV, "")
        max_files = int(raw) if raw.isdigit() and int(raw) > 0 else BATCH_FILES
        max_files = min(max_files, _fd_budget())
        batch = _Batch(DestDirs(synced_later=True))
        try:
            for it in items:
                if isinstance(it, Unsorted):
                    self._stage_group(it, batch)
                else:
                    self._stage_one(it, batch)
                if len(batch.staged) >= max_files or batch.size >= BATCH_BYTES:
                    self._finish_batch(batch, names)
                    batch.dirs.close()
                    batch = _Batch(DestDirs(synced_later=True))
            if batch.staged:
                self._finish_batch(batch, names)
        finally:
            batch.dirs.close()

    def _tick(self) -> None:
        if self.progress:  # an unsorted inode counts as a copy until it is read
            self.progress(self._done_files, len(self.plan.copies) + self._unsorted_left,
                          self._done_bytes, self._bytes_total)

    # --- content the archive already has ---

    def _confirm(self, k: Known) -> None:
        self.c.files_unchanged += len(k.fresh)
        self._touch.extend(s.path for s in k.fresh)
        self.confirmed.extend((s, k.target) for s in k.fresh)
        assert k.content.full is not None  # grouped contents always carry their hash
        # the target first, then the other archive inodes of the group
        order = sorted(k.content.archive, key=lambda f: k.target not in f.paths)
        for s in k.check:
            for f in order:
                path = k.target if k.target in f.paths else f.paths[0]
                res = self._compare(s.path, s.file, path, f)
                if res.equal:
                    self.c.files_confirmed += 1
                    self._row(s, path, k.content.full)
                    break
                if res.problem is None or res.problem[0] != "differs":
                    break  # vanished/changed/unreadable: reported, nothing more to try
            else:
                self._collision(s)
        if len(self._rows) + len(self._touch) >= FLUSH_EVERY:
            self.flush()

    def _compare(self, a: bytes, fa: IndexedFile, b: bytes, fb: IndexedFile) -> Compared:
        res = same_bytes(a, fa.ident, b, fb.ident)
        self.c.bytes_read += res.bytes_read
        if res.problem and res.problem[0] != "differs":
            self.c.problems.append(Problem(a, res.problem[0], res.problem[1]))
        return res

    # --- new content ---

    def _stage_one(self, cp: Copy, batch: _Batch) -> None:
        self._tick()
        self._done_files += 1
        self._done_bytes += cp.content.size
        try:
            st = stage_copy(cp.src.path, os.path.dirname(cp.dest), cp.src.file.ident,
                            batch.dirs)
        except CopyError as e:
            self.c.problems.append(Problem(cp.src.path, e.reason, e.detail))
            return
        self.kill("written")
        batch.add(cp, st)

    def _stage_group(self, u: Unsorted, batch: _Batch) -> None:
        """An unsorted size group (consolidate/sortcopy.py): each inode read once."""
        self._tick()
        res = sort_group(u, self._new_copy, batch.dirs, lambda: self.kill("written"))
        self._unsorted_left -= u.inodes
        self.c.bytes_read += res.bytes_read  # every inode's one read (stage_read: none)
        self.c.problems.extend(res.problems)
        self.c.contents_sorted += res.contents
        batch.hashes.extend(res.hashes)
        for cp, st in res.staged:
            self.plan.copies.append(cp)
            self._done_files += 1
            self._done_bytes += cp.content.size
            self._bytes_total += cp.content.size
            batch.add(cp, st)

    def _finish_batch(self, batch: _Batch, names: Names) -> None:
        """Make the batch durable with one sync, then compare and link each copy into
        place; the rows wait for the next sync (module docstring)."""
        if not batch.staged:
            return
        dirs = batch.dirs
        sync_batch(self.archive, [st for _, st in batch.staged], dirs)
        self._unsynced = False
        self.flush()  # the previous batch's rows: its names are durable now
        for _ in batch.staged:
            self.kill("synced")
        for cp, st in batch.staged:
            res = self._place(cp, st, names, dirs)
            if res is not None:
                self._unsynced = True
                self._copied(cp, res)
                self.kill("queued")
        # after the batch's archive files: the writer's index learns their filesystem
        # from those records (a hash of a filesystem it has not met is dropped)
        self._hashes.extend(batch.hashes)

    def _place(self, cp: Copy, st: Staged, names: Names, dirs: DestDirs) -> CopyResult | None:
        dest = cp.dest
        for _ in range(MAX_RETRIES):
            try:
                return place_copy(st, dest, self.kill, dirs)
            except CopyError as e:
                if e.reason == "exists" and self.policy == "suffix":
                    nxt = names.claim(cp.dest, "suffix")  # the next free "name (n).ext"
                    if nxt is not None:
                        dest = nxt
                        continue
                discard(st, dirs)
                self.c.problems.append(Problem(cp.src.path, e.reason, e.detail))
                return None
        discard(st, dirs)
        self.c.problems.append(Problem(cp.src.path, "name-collision", "no free name"))
        return None

    def _copied(self, cp: Copy, res: CopyResult) -> None:
        c = self.c
        c.files_copied += 1
        c.bytes_copied += cp.content.size
        c.bytes_written += res.bytes_written
        c.bytes_read += res.bytes_read
        st = res.dest_stat
        self._events.append(FileEvent.from_stat(res.dest, st))
        f = cp.src.file
        self._hashes += [HashUpdate(st.st_dev, st.st_ino, res.head, res.full),
                         HashUpdate(f.dev, f.ino, res.head, res.full)]
        dest_file = IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                st.st_ctime_ns, res.head, res.full, 0, (res.dest,))
        for s in cp.content.sources:
            if s.file.key == f.key:
                self._row(s, res.dest, res.full)
                continue
            if s.path in cp.compared:  # equal to the bytes the copy was verified against
                c.files_confirmed += 1
                self._row(s, res.dest, res.full)
                continue
            if res.data is not None:  # the copy's verified bytes: read the other path only
                cmp = same_as_data(s.path, s.file.ident, res.data)
                self.c.bytes_read += cmp.bytes_read
                if cmp.problem and cmp.problem[0] != "differs":
                    self.c.problems.append(Problem(s.path, cmp.problem[0], cmp.problem[1]))
            else:
                cmp = self._compare(s.path, s.file, res.dest, dest_file)
            if cmp.equal:
                c.files_confirmed += 1
                self._row(s, res.dest, res.full)
            elif cmp.problem is not None and cmp.problem[0] == "differs":
                self._collision(s)

    def _collision(self, s: SourcePath) -> None:
        self.collided.append(s)
        self.c.problems.append(Problem(s.path, "hash-collision", "same size and hash as "
                                       "other content, other bytes: imported on its own"))

    # --- index writes ---

    def _row(self, s: SourcePath, archive_path: bytes, full: bytes) -> None:
        self.confirmed.append((s, archive_path))
        f = s.file
        self._rows.append(Provenance(self.name, s.path, archive_path, full, f.size, f.dev,
                                     f.ino, f.mtime_ns, f.ctime_ns, self._now, self._now))

    def flush(self) -> None:
        """Hand the queued index rows to the writer (archive files first, then hashes,
        then provenance); it writes them beside the next batch's copies."""
        if self._events or self._hashes or self._rows or self._touch:
            self._writer.write(self.scan_id, self._events, self._hashes, self._rows,
                               self.name, self._touch, self._now)
        self._events, self._hashes, self._rows, self._touch = [], [], [], []


@dataclass
class _Batch:
    """Copies staged for one sync: their destination directories and temp files."""

    dirs: DestDirs
    staged: list[tuple[Copy, Staged]] = field(default_factory=list)
    size: int = 0
    hashes: list[HashUpdate] = field(default_factory=list)  # of every source read

    def add(self, cp: Copy, st: Staged) -> None:
        self.staged.append((cp, st))
        self.size += cp.content.size


def _fd_budget() -> int:
    """Files a batch may hold open: each staged copy keeps its temp file and its source
    open until placed (fsops.copy.DestDirs). The soft limit is raised to the hard one
    where that is allowed (commonly 1024 of 524288); a third of it stays for the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    want = min(want, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(8, soft // 3)


def _no_new_copy(c: Content, _data: bytes) -> Copy | None:
    raise AssertionError(f"an unsorted size group ({c.size} bytes) needs new_copy")

