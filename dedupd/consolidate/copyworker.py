"""The copy phase's confirming side, in a forked process beside the reading side.

A first import is Python-bound per file (issue 16): reading, hashing, sorting
size groups into contents and naming them cost about as much as creating the
staged files, syncing, reading them back, comparing and linking them, and all of
it ran in one process. The run's process (execute.py; names are decided in one
place) reads each source, names it and writes its staged file; this worker,
forked when the run starts (run.py: its heap still small), makes the copies
durable, verifies and links them, on the other core. It gets, in plan order:

- "n" (a round of copies begins): at most how many copies the run may stage in
  it (the worker makes no more files ahead than that, copyloop.POOL);
- "b" (a batch): per copy the archive path, the source path, the source's stat
  as it was read, its hashes and how it was staged: by the run (read whole, at
  most KEEP_BYTES, and written to a staged file with no name yet -- O_TMPFILE,
  fsops/anon.py -- or a temp name where the filesystem has no O_TMPFILE), whose
  handle comes over a socket with the very handle its source was read through;
  or not at all (None: a larger source, which the worker copies from the source
  itself, stage_copy, checking the indexed identity), and how many of the files
  with no name the worker made ahead (copyloop.POOL, sent to the run over the
  same socket) the batch used, and how many copies may still follow. The
  worker takes each staged file over (fsops.copy.adopt_staged). Then one
  syncfs, the batch's staged files dropped from the cache and read back, each
  compared byte for byte with its source re-read through its handle, the source
  required to be the very inode that was read, unchanged (its ctime moves with
  any write), then linked to its name, never replacing a file
  (fsops.copy.place_copy). A batch's sync runs beside the verify and links of
  the batch before (copyloop.py: the worker's loop);
- "e" (end of a round of copies): the last batch finished, then a syncfs when
  names were placed since the previous one began. The worker exits when its
  input closes (EOF).

It answers in order: "d" per batch, once the next batch is staged (or at "e"),
with how many batches, from the first, have every name durable (a syncfs that
began after their links is over: the run hands their index rows to the writer
only then) and per copy "p" (placed, with the name and the copy's stat) or "x"
(failed, with the reason); "done" at the end of a round, once a last syncfs
made every name placed durable, with the number of batches so far. The run may
have AHEAD batches unanswered and reads answers whenever its next message does
not fit in the pipe, so neither side waits on a full pipe.

Kill -9: the worker keeps nothing that outlives it but temp files (only where
the filesystem has no O_TMPFILE: a file with no name is freed by the kernel),
which the next run sweeps; it inherits the run's archive lock, so no next run
starts while it may still write. When the run dies the worker sees EOF (or
EPIPE) and exits, placing nothing more; when the worker dies the run fails with
an error and places nothing more. Test hook: DEDUPD_TEST_KILL_AFTER_COPY_STEPS=k
SIGKILLs the run and the worker at the worker's k-th step, or with "step:k" at
the k-th step of that name. Steps, in the order the worker takes them (all in
one thread: copyloop.py): "written" per copy of batch N+1 (after batch N's
steps when the two would hold too many handles), "syncing" (batch N+1's sync
begun, in the background), then for batch N "synced" per copy (its sync over),
"verified", "placed", "queued" copy by copy, "answered" (its answer sent);
"ended" after a round's last syncfs. DEDUPD_TEST_KILL_WHICH=run or
worker kills only that one; "stop" SIGSTOPs the worker instead (a test then
acts while it is frozen and sends SIGCONT).
"""

from __future__ import annotations

import array
import os
import select
import socket
from collections.abc import Callable
from typing import NoReturn

from dedupd import forkpipe
from dedupd.consolidate.copyloop import FDS_PER_MSG, WorkerLoop
from dedupd.consolidate.copyloop import KILL_ENV as KILL_ENV
from dedupd.consolidate.copyloop import KILL_WHICH_ENV as KILL_WHICH_ENV
from dedupd.consolidate.copyloop import StatWire as StatWire
from dedupd.consolidate.copyloop import stat_wire as stat_wire
from dedupd.errors import DedupdError
from dedupd.forkpipe import Wire

_FDS_SPACE = socket.CMSG_LEN(FDS_PER_MSG * array.array("i").itemsize)
# Batches the run may have sent that the worker has not answered: it answers a batch
# once it has staged the next one (copyloop.py), so with fewer than 2 the run would
# wait while the worker stages; 4 lets the run stage on while the worker waits for a
# batch's syncfs (on the real bench tree the run waited 0.8 s for answers with 2,
# 0.3-0.6 s with 4). Only their handles are in flight (in the socket), not their bytes.
AHEAD = 4


class WorkerFailed(DedupdError):
    """The copy worker died or failed; copies it had not placed stay temp files."""


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
        self.on_batch: Callable[[int, list[Wire] | None], None] = _unset
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def work(i: int, o: int) -> None:
            ours.close()
            WorkerLoop(i, o, theirs, archive, policy).serve()

        try:
            self.pid, self.to, self.frm = forkpipe.spawn(work)
        finally:
            theirs.close()
        self._fds = ours  # the sources' handles go over this socket (SCM_RIGHTS)
        os.set_blocking(self.to, False)
        self.batches_sent = self.batches_done = 0
        self._finished = False
        self._pool: list[int] = []  # files with no name the worker made (fresh_file)
        self._pooled = 0  # of those, used for the batch being made
        self._none_coming = False  # the worker said it makes none (no more asking)

    def fresh_file(self) -> int | None:
        """A file with no name (mode 0600, empty) in the archive root's filesystem and
        mount, made ahead by the worker for a copy (copyloop.POOL), or None when it
        has none ready (the caller makes one). The caller owns it."""
        if not self._pool:
            if self._none_coming:
                return None
            self._take_pool()
            if not self._pool:
                return None
        self._pooled += 1
        return self._pool.pop()

    def _take_pool(self) -> None:
        """The files the worker sent since (never waiting for more)."""
        while True:
            try:  # socket.recv_fds, whose flags Python 3.11 does not pass on
                msg, anc, _, _ = self._fds.recvmsg(1, _FDS_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except ConnectionResetError:  # it died with handles of ours unread: gone,
                self._none_coming = True  # its error (or EOF) comes with the next answer
                return
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                    self._pool.extend(fds)
            if msg == b"n":  # it makes none (no O_TMPFILE there, a low open-file limit)
                self._none_coming = True
            if not msg:  # the worker is gone: its error comes with the next answer
                return

    def expect(self, left: int) -> None:
        """A round of copies begins, of at most `left` (the files the worker makes
        ahead: never more than the run may use, copyloop.POOL)."""
        self._write(forkpipe.frame(("n", left)))

    def send_batch(self, items: list[Wire], fds: list[int], left: int) -> None:
        """One batch: per copy (id, archive path, source path, the source's stat as
        read -- or, not staged, the identity it must still have --, head hash, full
        hash, its staged file's temp name: b"" for none, None when not staged), and
        per staged copy its staged file's handle and its source's, in that order
        (the caller closes its own); left: the copies that may still follow it in
        this round, at most."""
        for k in range(0, len(fds), FDS_PER_MSG):
            try:
                socket.send_fds(self._fds, [b"f"], fds[k:k + FDS_PER_MSG])
            except (BrokenPipeError, ConnectionResetError):
                self._last_words()
        self._write(forkpipe.frame(("b", items, self._pooled, left)))
        self._pooled = 0
        self.batches_sent += 1

    def wait(self, behind: int = AHEAD) -> None:
        """Read answers until at most `behind` sent batches are not done (AHEAD: the
        worker answers a batch only once it has the next)."""
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
        for fd in self._pool:  # unused: freed with their last handle
            os.close(fd)
        self._pool = []
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
            self.on_batch(msg[1], None)


def _unset(_durable: int, _results: list[Wire] | None) -> None:
    raise AssertionError("CopyWorker.on_batch was not set")
