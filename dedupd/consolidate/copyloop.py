"""The copy worker's process: its loop (copyworker.py has the protocol and the run's side).

Its disk waits overlap its CPU work. A batch's syncfs (then the drop of its
staged files from the page cache and one read-ahead of them, fsops.copy.sync_batch)
runs in a thread of its own, _Syncer: system calls that release the interpreter's
lock. It begins as soon as the batch is received (copies the run staged, taken
over here, fsops.copy.adopt_staged; a large one copied here, stage_copy),
while this thread goes on to the batch before: waits for that one's sync, reads
it back (from the pages read ahead), compares it with the sources re-read,
checks the sources and links it (fsops.copy.place_copy), and answers it. A sync
makes durable the names placed before it began: those of the batches finished
then (_Syncer.covers), not those being linked beside it, so each answer says how
many batches, from the first, have every name durable (the run hands their
index rows to the writer only then). Per batch, in this order:

    receive N+1, stage N+1 ("written" per copy), start N+1's sync ("syncing")
                                                  | sync of N+1 (thread)
    wait for N's sync ("synced" per copy of N), verify, link ("verified",
    "placed", "queued" per copy of N), answer N ("answered")
    receive N+2 ...

Every per-file order of fsops/copy.py stays: write -> durable -> read back from
the disk -> compare -> source unchanged -> link. At most two batches are in the
worker: their handles (the run sizes batches for that: execute.py; when two
would hold more than half the open-file limit, a size group's batch being one,
the second is staged only once the first is answered). Every kill step is
taken in this thread, so
their order is fixed whatever the sync thread does meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import threading
from dataclasses import dataclass, field

from dedupd import forkpipe
from dedupd.consolidate.plan import Names
from dedupd.files.events import Ident
from dedupd.forkpipe import Wire
from dedupd.fsops import anon
from dedupd.fsops.copy import (
    CopyResult,
    DestDirs,
    DirCache,
    Staged,
    adopt_staged,
    discard,
    kept_dirs,
    place_copy,
    stage_copy,
    sync_batch,
)
from dedupd.fsops.durable import sync_filesystem
from dedupd.fsops.source import CopyError

# Files with no name the worker makes ahead in the archive's root for the run to
# write its copies into (creating them was a tenth of the run's time, which bounds
# the import; the worker has time to spare): at most pool_size() sent and not yet
# used, and only under an open-file limit that leaves room for them (the run raises
# it, helpers.fd_budget). POOL is five batches (execute.BATCH_FILES): the run may
# stage copyworker.AHEAD batches and most of the next before the worker learns they
# used the files (with 256, half a batch, the run still made 12,000 of a
# 20,000-file import's files itself; with two batches 3,000, with four 350, each
# one the pool then had to spare at the end). Never more than the run says it may
# still stage ("n", and each batch; 0-5 left on the bench trees, 256 before):
# a file left unused is freed at the end, and ext4 then skips its inode number at
# each allocation in its group for a minute or more (recently_deleted: with 1,024
# of them, each create of the next import took 52 microseconds instead of 7).
POOL = 2560
POOL_FIRST = 16  # sent before the rest (_fill_pool)
POOL_MIN_LIMIT = 4096
KILL_ENV = "DEDUPD_TEST_KILL_AFTER_COPY_STEPS"
KILL_WHICH_ENV = "DEDUPD_TEST_KILL_WHICH"
MAX_RETRIES = 20
FDS_PER_MSG = 250  # SCM_RIGHTS carries at most 253 handles a message
StatWire = tuple[int, int, int, int, int, int, int, int, int, int]


def pool_size(soft: int) -> int:
    """Files made ahead under an open-file limit of soft (0: none): an eighth of it at
    most, beside the run's batches and source directories (fd_budget's thirds)."""
    return 0 if soft < POOL_MIN_LIMIT else min(POOL, soft // 8)


def stat_wire(st: os.stat_result) -> StatWire:
    return (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid,
            st.st_size, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)


def stat_from(t: StatWire) -> os.stat_result:
    mode, ino, dev, nlink, uid, gid, size, a, m, c = t
    g = 10**9
    return os.stat_result((mode, ino, dev, nlink, uid, gid, size, a // g, m // g, c // g,
                           a / g, m / g, c / g, a, m, c))


class _Syncer:
    """One batch's sync_batch in a thread of its own; wait() joins it (its error, if
    it failed, raised there)."""

    def __init__(self, archive: bytes, staged: list[Staged], dirs: DestDirs,
                 covers: int) -> None:
        """covers: the batches whose every name was placed when it began (it makes
        their names durable)."""
        self.error: BaseException | None = None
        self.covers = covers
        self._t = threading.Thread(target=self._run, args=(archive, staged, dirs),
                                   name="dedupd-sync", daemon=True)
        self._t.start()

    def _run(self, archive: bytes, staged: list[Staged], dirs: DestDirs) -> None:
        try:
            sync_batch(archive, staged, dirs)
        except BaseException as e:  # for wait(): this thread has no one to tell
            self.error = e

    def wait(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error

    def join(self) -> None:
        self._t.join()


@dataclass
class _InFlight:
    """A batch in the worker: staged (anything but its answer), then synced by a
    _Syncer, then verified, placed and answered. Its DestDirs holds its handles."""

    dirs: DestDirs
    staged: list[tuple[int, bytes, Staged]] = field(default_factory=list)
    results: list[Wire] = field(default_factory=list)
    sync: _Syncer | None = None

    def close(self) -> None:
        """Close its handles, its sync over first (it reads them)."""
        if self.sync is not None:
            self.sync.join()
        self.dirs.close()


class WorkerLoop:
    """The worker process's loop (module docstring; the protocol: copyworker.py)."""

    def __init__(self, inp: int, out: int, fds: socket.socket, archive: bytes,
                 policy: str) -> None:
        self.inp, self.out, self.fds = inp, out, fds
        # a name taken since it was planned: the next free suffix on the disk (the
        # run's planned names are not known here; link() never replaces one anyway)
        self.archive, self.policy, self.names = archive, policy, Names(set())
        self.kill = KillHook()
        # copies two batches in flight may hold: up to three handles each within half the
        # open-file limit (the run's batches stay under it, helpers.fd_budget; a size
        # group comes in one batch, up to inventory.UNSORTED_FILES: 2 x 256 x 3 handles
        # overran a limit of 1024)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 16
        self.max_files = max(8, soft // 3) // 2
        # the archive directories' handles, kept from batch to batch (kept_dirs); within
        # a batch, one a copy at most (counted above)
        self.dirs = DirCache(sync=False, keep=kept_dirs())
        # batches finished (verified, linked, answered); of those, the first `durable`
        # have every name durable (a sync that began after their links is over), and
        # the last with a name placed is number `last_placed`
        self.finished = self.durable = self.last_placed = 0
        self.inflight: list[_InFlight] = []  # at most two: staged, and being staged
        self.pool_max = pool_size(soft)  # files made ahead for the run (_fill_pool)
        self.pool = self.pool_max > 0
        self.pool_out = 0  # sent to the run and not yet used by it
        self.left = 0  # copies the run may still stage (at most): none made beyond

    def serve(self) -> None:
        try:
            if not self.pool:
                self._no_pool()
            while (msg := forkpipe.recv(self.inp)) is not None:
                if msg[0] == "n":  # a round of copies begins: at most this many
                    self.left = msg[1]
                    self._fill_pool()
                elif msg[0] == "b":
                    self.pool_out -= msg[2]  # the run's copies written to pool files
                    self.left = msg[3]
                    if self.inflight and len(self.inflight[0].staged) + len(
                            msg[1]) > self.max_files:  # the one before first, not beside
                        self._finish(self.inflight[0])
                    cur = self._stage(msg[1])
                    if cur.staged:  # at once: it overlaps the verify and links of the
                        # batch before, whose names a later sync makes durable
                        cur.sync = _Syncer(self.archive, [s for _, _, s in cur.staged],
                                           cur.dirs, self.finished)
                        self.kill("syncing")
                    if len(self.inflight) > 1:
                        self._finish(self.inflight[0])
                    self._fill_pool()
                elif msg[0] == "e":
                    if self.inflight:
                        self._finish(self.inflight[0])
                    if self.last_placed > self.durable:  # names no sync began after
                        sync_filesystem(self.archive)
                        self.kill("ended")
                    self.durable = self.finished
                    forkpipe.send(self.out, ("done", self.durable))
            # EOF: the run is done, or gone (what is staged has no name, or a temp name
            # for the next run's sweep)
        finally:
            for b in self.inflight:
                b.close()
            self.dirs.close()

    def _no_pool(self) -> None:
        """Make no more files ahead, and tell the run (a message with no handles), so
        it stops asking for one at each copy."""
        self.pool = False
        with contextlib.suppress(BlockingIOError):
            self.fds.send(b"n", socket.MSG_DONTWAIT)

    def _fill_pool(self) -> None:
        """Make files with no name in the archive's root (fsops/anon.py) until pool_max are
        with the run (or as many as it may still stage), and send them over the
        handles' socket as they are made (the first POOL_FIRST at once: the run stages
        its first copies meanwhile, in files of its own), never waiting: while the
        run does not read them (it takes them when it needs one), what does not fit
        is closed (freed: they have no name). Where the archive cannot have them, no
        more are made."""
        want = min(self.pool_max, self.left) - self.pool_out
        if not self.pool or want <= 0:
            return
        dfd = self.dirs.fd(self.archive)
        fds: list[int] = []
        try:
            while want > 0:
                fd = anon.open_in(dfd, self.dirs.dev(self.archive))
                if fd is None:
                    self._no_pool()
                    break
                fds.append(fd)
                want -= 1
                if want and len(fds) < (POOL_FIRST if self.pool_out == 0 else FDS_PER_MSG):
                    continue
                try:
                    socket.send_fds(self.fds, [b"p"], fds, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                self.pool_out += len(fds)
                for fd in fds:  # the run has its own handles of those sent
                    os.close(fd)
                fds = []
        finally:
            for fd in fds:  # not sent: freed
                os.close(fd)

    def _stage(self, items: list[Wire]) -> _InFlight:
        """Receive a batch (its handles) and adopt or stage every copy of it."""
        handles = self._handles(2 * sum(1 for it in items if it[6] is not None))
        b = _InFlight(DestDirs(synced_later=True, dirs=self.dirs))
        self.inflight.append(b)  # closed by serve even if this fails
        h = 0
        for cid, dest, src, stw, head, full, tmp_name in items:
            ddir = os.path.dirname(dest)
            try:
                if tmp_name is None:  # a large source: copied here, from the source as stw
                    st = stage_copy(src, ddir, Ident(*stw[:5]), b.dirs)
                else:  # staged by the run: its handle and its source's
                    h += 2
                    st = adopt_staged(src, handles[h - 2], handles[h - 1], stat_from(stw),
                                      head, full, ddir, tmp_name, b.dirs)
            except CopyError as e:
                b.results.append(("x", cid, e.reason, e.detail))
                continue
            self.kill("written")
            b.staged.append((cid, dest, st))
        return b

    def _handles(self, n: int) -> list[int]:
        """The n source handles of a batch, in the order of its copies with bytes."""
        got: list[int] = []
        while len(got) < n:
            _, fds, flags, _ = socket.recv_fds(self.fds, 1, FDS_PER_MSG)
            got.extend(fds)
            if flags & socket.MSG_CTRUNC:  # the kernel dropped handles (our fd limit)
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                raise OSError(f"source handles lost in passing: too many open files: the "
                              f"limit (ulimit -n) is {soft}")
            if not fds:
                raise EOFError("the run closed the socket in the middle of a batch")
        return got

    def _finish(self, b: _InFlight) -> None:
        """Once b's sync is over: verify and link its copies one by one, answer it
        with how many batches (from the first) have every name durable."""
        if b.sync is not None:
            b.sync.wait()
            self.durable = max(self.durable, b.sync.covers)
            for _ in b.staged:
                self.kill("synced")
        placed = False
        for cid, dest, st in b.staged:
            res = self._place(cid, dest, st, b)
            if res is not None:
                placed = True
                b.results.append(("p", cid, res.dest, stat_wire(res.dest_stat), res.head,
                                  res.full, res.bytes_read, res.bytes_written))
                self.kill("queued")
        self.finished += 1
        if placed:
            self.last_placed = self.finished
        forkpipe.send(self.out, ("d", self.durable, b.results))
        self.inflight.remove(b)
        b.close()
        self.dirs.trim()
        self.kill("answered")

    def _place(self, cid: int, dest: bytes, st: Staged, b: _InFlight) -> CopyResult | None:
        want = dest
        for _ in range(MAX_RETRIES):
            try:
                return place_copy(st, dest, self.kill, b.dirs)
            except CopyError as e:
                if e.reason == "exists" and self.policy == "suffix":
                    nxt = self.names.claim(want, "suffix")  # the next free "name (n).ext"
                    if nxt is not None:
                        dest = nxt
                        continue
                discard(st, b.dirs)
                b.results.append(("x", cid, e.reason, e.detail))
                return None
        discard(st, b.dirs)
        b.results.append(("x", cid, "name-collision", "no free name"))
        return None


class KillHook:
    """The documented test-only SIGKILL after the k-th copy step (copyworker.py's
    docstring): KILL_ENV is k (any step) or "step:k" (the k-th of that step)."""

    def __init__(self) -> None:
        step, _, k = os.environ.get(KILL_ENV, "").rpartition(":")
        self.step = step or None
        self.after = int(k) if k.isdigit() else 0
        self.which = os.environ.get(KILL_WHICH_ENV, "both")
        self.steps = 0

    def __call__(self, step: str) -> None:
        if not self.after or self.step not in (None, step):
            return
        self.steps += 1
        if self.steps != self.after:
            return
        if self.which == "stop":  # frozen for a test to act meanwhile (SIGCONT)
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        if self.which in ("both", "run"):
            os.kill(os.getppid(), signal.SIGKILL)
        if self.which in ("both", "worker"):
            os.kill(os.getpid(), signal.SIGKILL)
