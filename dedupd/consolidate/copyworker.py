"""The copy phase's writing side, in a forked process beside the reading side.

A first import is Python-bound per file (issue 16): reading, hashing, sorting
size groups into contents and naming them cost about as much as creating the
staged files, syncing, reading them back, comparing and linking them, and all of
it ran in one process. The reading side stays in the run's process
(execute.py; names are decided in one place); this worker, forked when the run
starts (run.py: its heap still small), does the writing side on the other core.
It gets, in plan order:

- "c" (one per copy): the archive path, the source path, the source's stat as
  it was read, its hashes and its bytes (read whole by the run, at most
  KEEP_BYTES) -> a staged file in the target directory with the source's
  metadata (fsops.copy.stage_data): no name yet (O_TMPFILE, fsops/anon.py), or a
  temp name where the filesystem has no O_TMPFILE; a larger source comes without
  its bytes and the worker copies it from the source itself (stage_copy, which
  checks the indexed identity);
- "b" (end of a batch): one syncfs, the batch's staged files dropped from the
  cache and read back, each compared byte for byte with the bytes it was
  written from, its source re-opened beneath its anchor and required to be the
  very inode that was read, unchanged (its ctime moves with any write), then
  linked to its name, never replacing a file (fsops.copy.place_copy);
- "e" (end of a round of copies): a syncfs when names were placed since the
  previous one. The worker exits when its input closes (EOF).

It answers in order: "s" after each syncfs (every name it placed before is
durable: the run hands their index rows to the writer only then), "p" (placed,
with the name and the copy's stat) or "x" (failed, with the reason) per copy,
"d" per batch and "done" at the end. The run reads answers whenever its next
message does not fit in the pipe, so neither side waits on a full pipe.

Kill -9: the worker keeps nothing that outlives it but temp files (only where
the filesystem has no O_TMPFILE: a file with no name is freed by the kernel),
which the next run sweeps; it inherits the run's archive lock, so no next run starts
while it may still write. When the run dies the worker sees EOF (or EPIPE) and
exits; when the worker dies the run fails with an error and places nothing
more. Test hook: DEDUPD_TEST_KILL_AFTER_COPY_STEPS=k counts the five copy steps
here, in the order one process had them ("written" per copy, then per batch
"synced" per copy, then "verified", "placed", "queued" copy by copy), and
SIGKILLs the run and the worker at the k-th; DEDUPD_TEST_KILL_WHICH=run or
worker kills only that one.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from collections.abc import Callable
from typing import NoReturn

from dedupd import forkpipe
from dedupd.consolidate.plan import Names
from dedupd.errors import DedupdError
from dedupd.files.events import Ident
from dedupd.forkpipe import Wire
from dedupd.fsops.copy import (
    CopyResult,
    DestDirs,
    Staged,
    discard,
    place_copy,
    stage_copy,
    stage_data,
    sync_batch,
    sync_filesystem,
)
from dedupd.fsops.source import CopyError

KILL_ENV = "DEDUPD_TEST_KILL_AFTER_COPY_STEPS"
KILL_WHICH_ENV = "DEDUPD_TEST_KILL_WHICH"
MAX_RETRIES = 20
FDS_PER_MSG = 250  # SCM_RIGHTS carries at most 253 handles a message
StatWire = tuple[int, int, int, int, int, int, int, int, int, int]


class WorkerFailed(DedupdError):
    """The copy worker died or failed; copies it had not placed stay temp files."""


def stat_wire(st: os.stat_result) -> StatWire:
    return (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
            st.st_size, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)


def stat_from(t: StatWire) -> os.stat_result:
    mode, ino, dev, nlink, uid, gid, size, a, m, c = t
    g = 10**9
    return os.stat_result((mode, ino, dev, nlink, uid, gid, size, a // g, m // g, c // g,
                           a / g, m / g, c / g, a, m, c))


class CopyWorker:
    """The run's side of the worker (module docstring). Each batch's answer goes to
    on_batch(synced, results), in order, from inside whichever call reads it: synced
    says a syncfs made every name placed by the batches before durable. Construct
    before starting threads (dedupd.forkpipe's rule)."""

    def __init__(self, archive: bytes, policy: str) -> None:
        """Fork the worker; on_batch is set before the first batch. Fork it while the
        run's heap is small (before the index scan): each page the run writes after a
        fork costs it a copy-on-write fault (34,000 of them for a 20,000-file import
        when it was forked at the copies)."""
        self.on_batch: Callable[[bool, list[Wire]], None] = _unset
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def work(i: int, o: int) -> None:
            ours.close()
            _Worker(i, o, theirs, archive, policy).serve()

        try:
            self.pid, self.to, self.frm = forkpipe.spawn(work)
        finally:
            theirs.close()
        self._fds = ours  # the sources' handles go over this socket (SCM_RIGHTS)
        os.set_blocking(self.to, False)
        self.batches_sent = self.batches_done = 0
        self._finished = False

    def send_batch(self, items: list[Wire], payload: list[bytes], fds: list[int]) -> None:
        """One batch: per copy (id, archive path, source path, the source's stat as
        read -- or, without bytes, the identity it must still have --, head hash, full
        hash, length of its bytes in payload or -1), then the bytes, in that order, and
        the handle each of those bytes was read through (the caller closes its own)."""
        for k in range(0, len(fds), FDS_PER_MSG):
            try:
                socket.send_fds(self._fds, [b"f"], fds[k:k + FDS_PER_MSG])
            except BrokenPipeError:
                self._last_words()
        self._write(forkpipe.frame(("b", items, sum(len(b) for b in payload))))
        for b in payload:
            self._write(b)
        self.batches_sent += 1

    def wait(self, behind: int) -> None:
        """Read answers until at most `behind` sent batches are not done."""
        while self.batches_sent - self.batches_done > behind:
            self._answer()

    def finish(self) -> None:
        """Let the worker sync what it placed since its last sync; read every answer."""
        self._write(forkpipe.frame(("e",)))
        while not self._finished:
            self._answer()
        self._finished = False  # another round of copies may follow

    def close(self) -> None:
        """End the worker (it sees EOF) and reap it; WorkerFailed if it failed."""
        if self.pid and not self._close():
            raise WorkerFailed("the copy worker failed after its last answer")

    def abandon(self) -> None:
        """Stop without waiting for answers (the run is failing): the worker sees EOF
        (or EPIPE) and exits; its temp files stay for the next run's sweep."""
        if self.pid:
            self._close()

    def _close(self) -> bool:
        self._fds.close()
        forkpipe.close(self.to)
        forkpipe.close(self.frm)
        ok = forkpipe.reap(self.pid)
        self.pid = 0
        return ok

    def _write(self, data: bytes) -> None:
        """Write to the worker, reading its answers whenever the pipe is full (it may
        be waiting for us to read them)."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.to, view):]
            except BlockingIOError:
                ready, _, _ = select.select([self.frm], [self.to], [])
                if ready:
                    self._answer()
            except BrokenPipeError:
                self._last_words()

    def _last_words(self) -> NoReturn:
        """The worker closed its end: read what it sent before (answers of batches it
        did, then its error, e.g. out of file descriptors), else it died."""
        while True:
            self._answer()  # raises WorkerFailed at its error or at EOF

    def _answer(self) -> None:
        msg = forkpipe.recv(self.frm)
        if msg is None:
            raise WorkerFailed("the copy worker died (killed?); its temp files are removed "
                               "by the next run")
        kind = msg[0]
        if kind == "err":
            lines = str(msg[1]).strip().splitlines()
            raise WorkerFailed(f"the copy worker failed: {lines[-1] if lines else '?'}")
        if kind == "d":
            self.batches_done += 1
            self.on_batch(msg[1], msg[2])
        elif kind == "done":
            self._finished = True
            self.on_batch(msg[1], [])


class _Worker:
    """The worker process's loop (module docstring)."""

    def __init__(self, inp: int, out: int, fds: socket.socket, archive: bytes,
                 policy: str) -> None:
        self.inp, self.out, self.fds = inp, out, fds
        # a name taken since it was planned: the next free suffix on the disk (the
        # run's planned names are not known here; link() never replaces one anyway)
        self.archive, self.policy, self.names = archive, policy, Names(set())
        self.kill = _KillHook()
        self.dirs = DestDirs(synced_later=True)
        self.unsynced = False  # names placed since the last syncfs
        # one receive buffer for every batch: a fresh one per batch costs a page fault
        # per 4 KiB (60,000 for 250 MB of copies)
        self.buf = bytearray()

    def serve(self) -> None:
        try:
            while (msg := forkpipe.recv(self.inp)) is not None:
                if msg[0] == "b":
                    _, items, total = msg
                    handles = self._handles(sum(1 for it in items if it[-1] >= 0))
                    _read_exact(self.inp, total, self.buf)
                    synced, results = self._batch(items, self.buf, handles)
                    forkpipe.send(self.out, ("d", synced, results))
                elif msg[0] == "e":
                    synced = self.unsynced
                    if synced:
                        sync_filesystem(self.archive)
                        self.unsynced = False
                    forkpipe.send(self.out, ("done", synced))
            # EOF: the run is done, or gone (what is staged stays a temp file for the
            # next run's sweep)
        finally:
            self.dirs.close()

    def _handles(self, n: int) -> list[int]:
        """The n source handles of a batch, in the order of its copies with bytes."""
        got: list[int] = []
        while len(got) < n:
            _, fds, flags, _ = socket.recv_fds(self.fds, 1, FDS_PER_MSG)
            got.extend(fds)
            if flags & socket.MSG_CTRUNC:  # the kernel dropped handles (our fd limit)
                raise OSError("source handles lost in passing (too many open files)")
            if not fds:
                raise EOFError("the run closed the socket in the middle of a batch")
        return got

    def _batch(self, items: list[Wire], payload: bytearray,
               handles: list[int]) -> tuple[bool, list[Wire]]:
        """Stage every copy, one sync, then verify and link copy by copy; (whether a
        sync made the names placed before durable, the answer per copy)."""
        results: list[Wire] = []
        staged: list[tuple[int, bytes, Staged]] = []
        view = memoryview(payload)
        data: memoryview | None
        off = 0
        try:
            for cid, dest, src, stw, head, full, n in items:
                sfd, data = -1, None
                if n >= 0:  # a view: the batch's bytes stay in one buffer, reused
                    sfd, data = handles.pop(0), view[off:off + n]
                    off += n
                st = self._stage(cid, dest, src, sfd, stw, head, full, data, results)
                if st is not None:
                    self.kill("written")
                    staged.append((cid, dest, st))
            if not staged:
                return False, results
            sync_batch(self.archive, [st for _, _, st in staged], self.dirs)
            self.unsynced = False
            for _ in staged:
                self.kill("synced")
            for cid, dest, st in staged:
                res = self._place(cid, dest, st, results)
                if res is not None:
                    self.unsynced = True
                    results.append(("p", cid, res.dest, stat_wire(res.dest_stat), res.head,
                                    res.full, res.bytes_read, res.bytes_written))
                    self.kill("queued")
            return True, results
        finally:  # the views of self.buf go with this frame: the next batch may grow it
            self.dirs.close()
            self.dirs = DestDirs(synced_later=True)

    def _stage(self, cid: int, dest: bytes, src: bytes, sfd: int, stw: StatWire, head: int,
               full: bytes, data: memoryview | None, results: list[Wire]) -> Staged | None:
        ddir = os.path.dirname(dest)
        try:
            if data is None:  # a large source: copied from the source, which must be stw
                return stage_copy(src, ddir, Ident(*stw[:5]), self.dirs)
            return stage_data(src, sfd, stat_from(stw), head, full, data, ddir, self.dirs)
        except CopyError as e:
            results.append(("x", cid, e.reason, e.detail))
            return None

    def _place(self, cid: int, dest: bytes, st: Staged,
               results: list[Wire]) -> CopyResult | None:
        want = dest
        for _ in range(MAX_RETRIES):
            try:
                return place_copy(st, dest, self.kill, self.dirs)
            except CopyError as e:
                if e.reason == "exists" and self.policy == "suffix":
                    nxt = self.names.claim(want, "suffix")  # the next free "name (n).ext"
                    if nxt is not None:
                        dest = nxt
                        continue
                discard(st, self.dirs)
                results.append(("x", cid, e.reason, e.detail))
                return None
        discard(st, self.dirs)
        results.append(("x", cid, "name-collision", "no free name"))
        return None


def _unset(_synced: bool, _results: list[Wire]) -> None:
    raise AssertionError("CopyWorker.on_batch was not set")


def _read_exact(fd: int, n: int, buf: bytearray) -> None:
    """n bytes from the pipe into the start of buf (grown to n when shorter: a batch's
    bytes, up to execute.BATCH_BYTES or an unsorted group's)."""
    if len(buf) < n:
        buf.extend(bytes(n - len(buf)))
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:n]])  # never past n: the next frame follows
        if not k:
            raise EOFError("the run closed the pipe in the middle of a batch")
        got += k
    view.release()


class _KillHook:
    """The documented test-only SIGKILL after the k-th copy step (module docstring)."""

    def __init__(self) -> None:
        raw = os.environ.get(KILL_ENV, "")
        self.after = int(raw) if raw.isdigit() else 0
        self.which = os.environ.get(KILL_WHICH_ENV, "both")
        self.steps = 0

    def __call__(self, _step: str) -> None:
        self.steps += 1
        if not self.after or self.steps != self.after:
            return
        if self.which in ("both", "run"):
            os.kill(os.getppid(), signal.SIGKILL)
        if self.which in ("both", "worker"):
            os.kill(os.getpid(), signal.SIGKILL)
