"""Carry out a plan: verified copies, byte-compared confirmations (confirm.py),
provenance rows.

Index writes are batched (every rows.FLUSH_EVERY files): a crash loses at most the
rows of one batch, and the next run rebuilds them from the files themselves
(the copies are already in the archive; they are found and byte-compared).

Copies go in batches (BATCH_FILES / BATCH_BYTES, and at most a quarter of the
open-file budget, helpers.fd_budget: each staged copy holds its staged file and
its source open until placed, and the worker holds two batches). This process
reads each source whole (hashing it, sorting unsorted size groups, naming new
contents), writes it to a staged file with no name yet (fsops/anon.py: O_TMPFILE,
one of those the worker makes ahead, copyloop.POOL, else one made here in its
archive directory; a temp name there where the filesystem has none) and hands
a batch -- hashes, stat, the staged file's handle and the very handle each source
was read through -- to the copy worker (consolidate/copyworker.py, a forked
process on the other core), which makes
the batch durable with one syncfs, reads the copies back from the disk,
compares each with its source re-read through its handle, checks the source
unchanged and links each copy into place (a batch's sync overlapping the
verify and links of the batch before), while this process reads and stages the
next batch.
The index rows of a batch go to the index writer (consolidate/writer.py,
another forked process) only after the worker says a
later sync made the batch's names durable (the next batch's, or the last one
at the end), so the index never names a copy a crash could lose. Each source
is read once for its copy and once by its verify; the bytes of a content with
other source paths stay in memory for their byte compare.

Test hooks: DEDUPD_TEST_KILL_AFTER_COPY_STEPS=k kills the run (and the worker)
at the worker's k-th copy step (copyworker.py); DEDUPD_TEST_COPY_BATCH_FILES=b
makes batches of b files, so the kill -9 tests cross batch boundaries with a few.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from dedupd.consolidate.confirm import Confirms, Counters
from dedupd.consolidate.copyworker import KILL_ENV, StatWire, stat_wire
from dedupd.consolidate.helpers import Helpers, fd_budget
from dedupd.consolidate.inventory import Content, SourcePath, Unsorted
from dedupd.consolidate.plan import Copy, Plan, copy_order, copy_size
from dedupd.consolidate.rows import Rows
from dedupd.consolidate.sortcopy import NewCopy, sort_group
from dedupd.files.events import Problem
from dedupd.forkpipe import Wire
from dedupd.fsops.copy import DestDirs, DirCache, kept_dirs, stage_bytes
from dedupd.fsops.fill import KEEP_BYTES
from dedupd.fsops.source import CopyError, SourceDirs, SourceRead, read_source
from dedupd.index.store import HashUpdate, Store

__all__ = ["BATCH_ENV", "KILL_ENV", "Executor"]
BATCH_ENV = "DEDUPD_TEST_COPY_BATCH_FILES"
# One filesystem sync per batch (see fsops/copy.py): bounded so a crash redoes little.
# Small enough that the worker starts soon after the plan and ends soon after the
# run's last read (while the run reads the first batch the worker waits, while the
# worker verifies and links the last one the run waits); large enough that the
# syncs' fixed cost stays small: a syncfs of a batch of small files takes 5-8 ms on
# the test VM (80 syncs of 256 files: 0.65 s of the worker's sync thread on the real
# bench tree; 0.45 s with batches of up to 1,024).
BATCH_FILES = 512
BATCH_BYTES = 16 << 20

CopyProgress = Callable[[int, int, int, int], None]  # files done/total, bytes done/total


class Executor:
    """Runs one plan against the archive; the caller holds the archive lock."""

    def __init__(self, store: Store, name: str, scan_id: int, plan: Plan, archive: bytes,
                 on_name_collision: str, progress: CopyProgress | None = None,
                 new_copy: NewCopy | None = None, helpers: Helpers | None = None) -> None:
        """new_copy names the contents found in plan.unsorted (plan.new_copy); helpers:
        the processes forked early for the run (Helpers), else forked here."""
        self._helpers = helpers
        self.store, self.name, self.scan_id, self.plan = store, name, scan_id, plan
        self._new_copy: NewCopy = new_copy or _no_new_copy
        self.archive = archive
        self._done_files = self._done_bytes = 0
        self._bytes_total = plan.bytes_to_copy
        # an unsorted inode, or an unnamed content, counts as a copy until it is read
        self._unsorted_left = sum(u.inodes for u in plan.unsorted) + len(plan.unnamed)
        self._bytes_total += sum(c.size for c in plan.unnamed)
        self.policy = on_name_collision
        self.progress = progress
        self.c = Counters()
        # (source path, archive file) pairs whose equality is confirmed: prune candidates
        self.confirmed: list[tuple[SourcePath, bytes]] = []
        self._pending: dict[int, tuple[Copy, bytes | None]] = {}  # sent to the worker
        self._next_id = 0
        self._max_files = BATCH_FILES  # copies a batch (_copy_all)
        # the files the worker makes ahead (_left): copies still known, inodes of size
        # groups not read yet, and what the groups read gave
        self._staged_left = self._group_inodes_left = 0
        self._sorted_inodes = self._sorted_copies = 0
        self._batch_hashes: list[list[HashUpdate]] = []  # of batches the worker has
        # the sources' directory handles, for the whole run: a size group's files lie
        # all over the shares, so keep many (a sixth of the open-file limit, at most
        # 4096: the batches' files take a third); never more than that sixth (a floor
        # of 64 overran `ulimit -n 64`: each source past it failed at every run)
        self._dirs = SourceDirs(min(4096, max(4, fd_budget() // 2)))
        # the archive directories copies are staged in (this process writes them; the
        # worker syncs, verifies and links them): new levels made durable by its syncs
        self._archive_dirs = DirCache(sync=False, keep=kept_dirs())
        self._staging = DestDirs(synced_later=True, dirs=self._archive_dirs)

    def run(self, replan: Callable[[list[SourcePath]], None] | None = None) -> Counters:
        """Confirm known contents, then copy. Sources that turn out to differ from every
        archive file of their hash group go to `replan`, which adds copies to the plan
        (rounds repeat while copies reveal more of them)."""
        h = self._helpers or Helpers(self.store.url, self.archive, self.policy)
        self._worker = h.worker
        self._q = Rows(h.writer, self.scan_id, self.name)
        self._confirms = Confirms(self.c, self._q)
        self.confirmed = self._q.confirmed
        self._worker.on_batch = self._answer
        try:
            self._run(replan)
        except BaseException:
            h.abandon()
            raise
        finally:
            self._dirs.close()
            self._staging.close()
            self._archive_dirs.close()
            # the worker's callback is this executor's method: left set, executor and
            # worker hold each other, so the plan and inventory outlive the run until a
            # collection (140,000 objects, 56 ms of CPU after a 20,000-file import)
            self._worker.on_batch = _answered
        h.close()
        if self._helpers is None:  # else their owner waits for the index writer's last
            self.c.rows_written += h.finish()  # rows (run.py: beside its report)
            h.wait()
        return self.c

    def _run(self, replan: Callable[[list[SourcePath]], None] | None) -> None:
        for k in self.plan.known:  # content the archive has (confirm.py)
            self._confirms.known(k)
            if self._q.full():
                self.flush()
        start = 0
        # the contents named as read and the size groups sorted as read: in the first
        # round only, in turns with the planned copies (copy_order)
        unnamed, groups = self.plan.unnamed, self.plan.unsorted
        while True:
            if self._confirms.collided and replan is not None:
                replan(self._confirms.collided)
                self._confirms.collided = []
                self._bytes_total = self.plan.bytes_to_copy
            self._copy_all(copy_order([*self.plan.copies[start:], *unnamed], groups,
                                      BATCH_BYTES, BATCH_FILES))
            unnamed, groups = [], []
            start = len(self.plan.copies)  # copies sorted from the groups included
            if not self._confirms.collided or replan is None:
                break
        self._tick()
        self.flush()  # the worker's end of each round made every name durable

    def _copy_all(self, items: list[Copy | Content | Unsorted]) -> None:
        """Read the items here and stage, sync, verify and link them in the copy worker
        (consolidate/copyworker.py), in batches of what is really staged (a size group's
        copies split among several where they pass the limits). Up to two batches are in the worker
        (one staged while the one before is synced, verified and linked) while the
        next is read; the round ends with a sync of the last one."""
        raw = os.environ.get(BATCH_ENV, "")
        max_files = int(raw) if raw.isdigit() and int(raw) > 0 else BATCH_FILES
        # the worker holds up to three handles a staged copy (its temp file, its source
        # and, the layout spreading them, its archive directory) for two batches (one
        # synced and linked while the next is staged): a quarter of the budget's files
        # keep them within 1.5 budgets (all of them overran a hard limit of 1024)
        max_files = self._max_files = min(max_files, max(1, fd_budget() // 4))
        # the copies this round may still stage from bytes read here (_left): the worker
        # makes no more files ahead than that (copyloop.POOL: one unused is freed at
        # the end). Those of planned copies (up to KEEP_BYTES: the worker copies a
        # larger one itself) and of a sorted group are known; an unread group's are
        # guessed from those read so far (a group is read whole whatever its size)
        self._staged_left = sum(int(copy_size(it) <= KEEP_BYTES) for it in items
                                if not isinstance(it, Unsorted))
        self._group_inodes_left = sum(it.inodes for it in items if isinstance(it, Unsorted))
        self._worker.expect(self._left())
        try:
            batch = _Batch()
            for it in items:
                if isinstance(it, Unsorted):
                    self._stage_group(it, batch)
                else:
                    self._stage_one(it, batch)
                if batch.files >= max_files or batch.size >= BATCH_BYTES:
                    self._end_batch(batch)
                    batch = _Batch()
            if batch.files or batch.hashes:
                self._end_batch(batch)
            self._worker.finish()
        except BaseException:
            batch.close()
            raise
        for cp, _ in self._pending.values():  # never answered: cannot happen, but say so
            self.c.problems.append(Problem(cp.src.path, "error", "copy worker gave no answer"))
        self._pending = {}

    def _end_batch(self, batch: _Batch) -> None:
        self._batch_hashes.append(batch.hashes)
        try:
            self._worker.send_batch(batch.items, batch.fds, self._left())
        finally:
            batch.close()
        batch.files = batch.size = 0  # sent: the same batch goes on empty (_stage_group)
        batch.hashes, batch.items = [], []
        self._archive_dirs.trim()
        self._worker.wait()

    def _left(self) -> int:
        """The copies still to stage from bytes read here: those known, and half as many
        as the unread size groups' inodes are likely to give (as many copies an inode
        as the groups read so far gave; one each before any). Too few costs the run a
        file it makes itself (7 us); too many, one the worker made and nothing uses,
        freed at the end (with the full guess: 83-757 on the real bench tree; with
        half: 4, and the run made 93 of its 19,851)."""
        inodes, copies = self._sorted_inodes or 1, self._sorted_copies or 1
        return self._staged_left + self._group_inodes_left * copies // (2 * inodes)

    def _tick(self) -> None:
        if self.progress:
            self.progress(self._done_files, len(self.plan.copies) + self._unsorted_left,
                          self._done_bytes, self._bytes_total)

    # --- new content ---

    def _stage_one(self, it: Copy | Content, batch: _Batch) -> None:
        """A planned copy, or a content of plan.unnamed, named here from its bytes."""
        self._tick()
        src = it.src if isinstance(it, Copy) else it.sources[0]
        f = src.file
        r: SourceRead | None = None
        if f.size <= KEEP_BYTES:  # larger: the worker copies it, a buffer at a time
            self._staged_left -= 1
            try:
                r = read_source(src.path, f.ident, self._dirs)
            except CopyError as e:
                self.c.problems.append(Problem(src.path, e.reason, e.detail))
            else:
                self.c.bytes_read += len(r.data)
        if isinstance(it, Copy):
            cp = it
        else:
            self._unsorted_left -= 1
            named = None
            if r is not None or f.size > KEEP_BYTES:  # else unreadable (reported)
                named = self._new_copy(it, None if r is None else r.data)
            if named is None:  # no source bytes, or no name for them (both reported)
                if r is not None:
                    r.close()
                self._done_bytes += f.size
                self.c.unnamed_failed += 1
                self.c.unnamed_failed_bytes += it.size
                return
            self.plan.copies.append(named)
            cp = named
        self._done_files += 1
        self._done_bytes += f.size
        if r is not None or f.size > KEEP_BYTES:
            self._send(cp, r, batch)

    def _stage_group(self, u: Unsorted, batch: _Batch) -> None:
        """An unsorted size group (consolidate/sortcopy.py): each inode read once."""
        self._tick()
        res = sort_group(u, self._new_copy, self._dirs)
        self._unsorted_left -= u.inodes
        # its inodes are so many copies now (the worker is told as its batches go)
        self._group_inodes_left -= u.inodes
        self._staged_left += len(res.copies)
        self._sorted_inodes += u.inodes
        self._sorted_copies += len(res.copies)
        self.c.bytes_read += res.bytes_read  # every inode's one read
        self.c.problems.extend(res.problems)
        self.c.contents_sorted += res.contents
        batch.hashes.extend(res.hashes)
        if len(res.copies) > self._max_files:
            # every source of the group is open until its batch is sent: its staged
            # files' handles come out of the source directories' (none needed until
            # the next read), else they overran `ulimit -n` 336..368 (256 files)
            self._dirs.close()
        for cp, r in res.copies:
            self.plan.copies.append(cp)
            self._done_files += 1
            self._done_bytes += cp.content.size
            self._bytes_total += cp.content.size
            self._staged_left -= 1
            self._send(cp, r, batch)
            # a group of up to inventory.UNSORTED_FILES: in one batch, its handles
            # overran the worker's limit (200 files under `ulimit -n` 384)
            if batch.files >= self._max_files or batch.size >= BATCH_BYTES:
                self._end_batch(batch)

    def _send(self, cp: Copy, r: SourceRead | None, batch: _Batch) -> None:
        """Hand one copy to the worker: staged here from its bytes as read (r), else
        (a large source) its source path, which the worker copies."""
        if r is None:
            i = cp.src.file.ident
            item: Wire = (cp.dest, cp.src.path,
                          (i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns), 0, b"", None)
            data = None
        else:
            # a file with no name the worker made ahead in the archive's root: linked
            # anywhere in the archive, which is one mount (handles.anchored crosses none)
            fresh = self._worker.fresh_file()
            try:
                tfd, tmp_name = stage_bytes(r.data, r.stat, cp.dest.rpartition(b"/")[0],
                                            self._staging, fresh)
            except CopyError as e:  # e.g. out of space: nothing staged
                r.close()
                self.c.problems.append(Problem(cp.src.path, e.reason, e.detail))
                return
            # the worker syncs the staged file, reads it back, compares it with the
            # source re-read through the handle it was read by, which it checks too
            batch.fds += (tfd, r.fd)
            item = (cp.dest, r.src, stat_wire(r.stat), r.head, r.full, tmp_name)
            # kept for the compare of the content's other source paths (Confirms.others)
            data = r.data if len(cp.content.sources) > 1 else None
        cid = self._next_id
        self._next_id += 1
        self._pending[cid] = (cp, data)
        batch.items.append((cid, *item))
        batch.files += 1
        batch.size += cp.content.size

    def _answer(self, durable: int, results: list[Wire] | None) -> None:
        """The worker's answer for one batch (copyworker.py), in the order of batches,
        or (results None) for the end of a round: the first `durable` batches have
        every name durable, so their rows may go."""
        self._q.flush_through(durable)
        if results is None:
            return
        for msg in results:
            if msg[0] == "p":
                _, cid, dest, stw, head, full, nread, nwritten = msg
                cp, data = self._pending.pop(cid)
                self._copied(cp, dest, stw, head, full, nread, nwritten, data)
            else:
                _, cid, reason, detail = msg
                cp, _ = self._pending.pop(cid)
                self.c.problems.append(Problem(cp.src.path, reason, detail))
        if self._batch_hashes:
            # after the batch's archive files: the writer records them first (save_hashes
            # skips a hash of an inode the index has no row for)
            self._q.hashes(self._batch_hashes.pop(0))
        self._q.end_answer()

    def _copied(self, cp: Copy, dest: bytes, stw: StatWire, head: int, full: bytes,
                nread: int, nwritten: int, data: bytes | None) -> None:
        """One copy placed at dest (the worker's "p" answer, copyworker.py; data: the
        source bytes it was verified against, when the run read them)."""
        c = self.c
        c.files_copied += 1
        c.bytes_copied += cp.content.size
        c.bytes_written += nwritten
        c.bytes_read += nread
        src = cp.src
        self._q.copied(src, dest, stw, head, full)  # its archive file, hashes and row
        if cp.content.sources != (src,):  # the common case has no other path to confirm
            self._confirms.others(cp, dest, stw, head, full, data)

    # --- index writes ---

    def flush(self) -> None:
        """Hand the queued index rows to the writer (rows.py)."""
        self._q.flush()


@dataclass
class _Batch:
    """Copies handed to the worker for one sync: how many, their bytes, and the hashes
    of every source read for them."""

    files: int = 0
    size: int = 0
    hashes: list[HashUpdate] = field(default_factory=list)
    items: list[Wire] = field(default_factory=list)  # copyworker.CopyWorker.send_batch
    fds: list[int] = field(default_factory=list)  # per staged copy its handle, its source's

    def close(self) -> None:
        """Close the run's handles of the batch's copies (the worker has its own)."""
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _answered(_durable: int, _results: list[Wire] | None) -> None:
    raise AssertionError("a copy worker answered after its run")


def _no_new_copy(c: Content, _data: bytes | None) -> Copy | None:
    raise AssertionError(f"a content named as read ({c.size} bytes) needs new_copy")

