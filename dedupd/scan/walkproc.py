"""The walk in forked processes: batches of FileEvents come back through pipes.

A walk is Python-bound; so is recording its batches in the index. In one
interpreter they take turns (and lose more to switching); in two processes
they run side by side on two cores. Same walk, same events, same counters:
only where it runs changes (dedupd.forkpipe for the process rules).

A rescan's walk (walk_listed: most directories only listed and digested) may
run in several processes that share the tree as they go: one starts at the
roots; any other that has nothing to do is given, by a busy one, half of the
subdirectories that one would have reached last (walk.Donor), with the
descriptor of the directory that listed them (SCM_RIGHTS), so every directory is
still opened relative to its listed parent and checked to be the listed inode.
The parent relays them and ends the walk when every process is idle with
nothing queued.

`dedupd scan` starts its walk before it has read the index (ForkedWalk with
later=True, forked before the index, SQLite and the rest are even imported): the
walk then runs while the parent imports, opens the index and reads the known
digests, which it hands over with start(). Until then a walk process holds what
it lists (walk.DirHeld: at most walkchild.HOLD_MAX entries, then it waits), and decides
it once they come.
"""

from __future__ import annotations

import contextlib
import functools
import marshal
import mmap
import os
import select

# the socket module's C core: socket.py's start-up (enums made of every constant)
# is a few ms of every `dedupd scan`, paid before its walk is forked
from _socket import AF_UNIX, SHUT_RDWR, SOCK_SEQPACKET, socketpair
from _socket import socket as Socket

from dedupd import forkpipe
from dedupd.files.events import FileEvent, Problem, WalkStats
from dedupd.forkpipe import ChildFailed, Wire
from dedupd.scan.walk import DirListed, WalkOptions
from dedupd.scan.walkchild import ABANDONED, FLAGS, PUBLISHED, child, recv_fds, send_fds, worker
from dedupd.tuples import TYPE_CHECKING

if TYPE_CHECKING:  # imported before `dedupd scan` forks its walk: no typing (tuples.py)
    from collections.abc import Iterator, Mapping, Sequence
    from typing import Any

# processes of a rescan's walk (one that has digests to compare): its directories
# are mostly only listed, so the walk is the scan; a first scan's walk is one
# process beside the index writer and the feeders. Four, on two cores: from a cold
# cache the walk waits for the disk, and four keep more requests in flight (the
# real tree of docs/schema.md: 1.16 s with one, 0.87 with two, 0.65 with four).
# From a warm one, no more of them walk at once than there are cores: each one
# more costs CPU (its own copy of the digests, its share of the tree handed over:
# 0.03 s on that tree) and no time. Which one it is, the walk itself tells: a
# process that blocks while it walks waits for the disk, and from then on every
# process may walk (walkchild: CORES, IO_EVERY, IO_SWITCHES, _Share.wanted)
RESCAN_WALKERS = 4


# marshal gives plain tuples; these make the NamedTuples back from them in C (a
# NamedTuple's _make is a Python function, called once per file of a tree here)
_file = functools.partial(tuple.__new__, FileEvent)
_listed = functools.partial(tuple.__new__, DirListed)
_LISTED_LEN = len(DirListed._fields)


def _items(ts: list[Wire]) -> list[FileEvent | DirListed]:
    """A batch's events from their tuples: files only (a first scan's batches) in
    one C-level pass; with directories listed (a rescan's), each by its length."""
    if _LISTED_LEN not in set(map(len, ts)):
        return list(map(_file, ts))
    return [_listed(t) if len(t) == _LISTED_LEN else _file(t) for t in ts]


class ForkedWalk:
    """walk(roots, opts) in a child (walk_listed with `known` digests: DirListed
    items among the events; in `workers` processes sharing the tree, see the module
    docstring); batches() yields lists of about n events, then `stats` holds the
    walk's counters. After each batch, `files` and `nbytes` are the files walked so
    far (those of unchanged directories included) and their bytes. later: the known
    digests are given by start(), before batches(), and the walk begins before
    (`workers` processes; they share the tree only when start() gave digests)."""

    def __init__(self, roots: Sequence[bytes], opts: WalkOptions, n: int,
                 known: Mapping[bytes, tuple[bytes, int]] | None = None,
                 workers: int = 1, *, later: bool = False) -> None:
        self.roots = list(roots)  # the normalized roots it walks (scan() records these)
        self.opts = opts
        self.stats = WalkStats()
        self.files = self.nbytes = 0
        self.procs: list[tuple[int, int, int]] = []  # (pid, to, frm) of each process
        self.socks: list[Socket] = []  # the parent's end of each one's channel
        self.queue: list[tuple[Wire, int]] = []  # subtrees given, none idle to take them
        self.relayed = 0  # subtrees handed from one process to another
        self.memfd = -1
        self.share = not later  # whether idle processes ask the busy one for work
        if not later and (known is None or workers <= 1):
            self.procs.append(forkpipe.spawn(lambda i, o: child(i, o, roots, opts, n, known)))
            return
        self.flag = mmap.mmap(-1, FLAGS)  # each process but the first starts "done"
        if later:
            self.memfd = os.memfd_create("dedupd-known", os.MFD_CLOEXEC)
        self.stopped = False
        pairs = [socketpair(AF_UNIX, SOCK_SEQPACKET)
                 for _ in range(workers)]
        try:
            for k in range(workers):
                self.procs.append(forkpipe.spawn(functools.partial(
                    worker, k, roots=roots, opts=opts, n=n,
                    known=None if later else known, flag=self.flag, memfd=self.memfd,
                    socks=pairs)))
        finally:
            for theirs, mine in pairs:
                mine.close()
                self.socks.append(theirs)
            if len(self.procs) < workers:
                self.close()

    def start(self, known: Mapping[bytes, tuple[bytes, int]]) -> None:
        """The index's digests, to a walk made with later=True (before batches())."""
        view = memoryview(marshal.dumps(dict(known)))
        while view:
            view = view[os.write(self.memfd, view):]
        os.close(self.memfd)
        self.memfd = -1
        self.flag[1] = PUBLISHED
        for _pid, to, _frm in self.procs:
            # one byte: a process waiting for them wakes; one that died (killed) is
            # reported by batches() as it reads the walk (ChildFailed), not here
            with contextlib.suppress(BrokenPipeError):
                os.write(to, b"k")
        self.share = bool(known)  # a first scan's walk stays one process

    def batches(self) -> Iterator[list[Any]]:
        try:
            yield from self._run()
        finally:
            self.close()

    def _run(self) -> Iterator[list[Any]]:
        idle: set[int] = set()  # processes whose last word was "done"
        ended: set[int] = set()
        totals = [(0, 0)] * len(self.procs)
        poll = select.poll()
        fds = {}
        for k, (_pid, _to, frm) in enumerate(self.procs):
            poll.register(frm, select.POLLIN)
            fds[frm] = ("pipe", k)
        for k, s in enumerate(self.socks):
            poll.register(s, select.POLLIN)
            fds[s.fileno()] = ("sock", k)
        while len(ended) < len(self.procs):
            for fd, _ev in poll.poll():
                kind, k = fds[fd]
                if kind == "sock":
                    if not self._relay(k, idle):
                        poll.unregister(fd)
                    continue
                msg = forkpipe.recv(fd)
                if msg is None:
                    raise ChildFailed("the walk process died")
                if msg[0] == "batch":
                    totals[k] = (msg[1], msg[2])
                    self.files = sum(t[0] for t in totals)
                    self.nbytes = sum(t[1] for t in totals)
                    yield _items(msg[3])
                elif msg[0] == "end":
                    ended.add(k)
                    poll.unregister(fd)
                    for name, v in zip(WalkStats.COUNTERS, msg[1], strict=True):
                        setattr(self.stats, name, getattr(self.stats, name) + v)
                    self.stats.problems += [Problem(*p) for p in msg[2]]
                else:
                    raise ChildFailed(f"the walk failed: {msg[1]}")

    def _relay(self, k: int, idle: set[int]) -> bool:
        """One message of process k's channel: subdirectories it gives (to an idle
        process, else queued) or its being done (then the next queued ones, else the
        others are asked to share; when all are idle, all are told to stop). A
        process is idle from its "done" (each task, and its start, ends with one)
        until it is given a task. False at EOF."""
        data, fds = recv_fds(self.socks[k])
        if not data:
            return False
        if self.stopped:
            for fd in fds:
                os.close(fd)
            return True
        if marshal.loads(data)[0] == "task":
            self.queue.append((data, fds[0]))
        else:
            idle.add(k)
        while self.queue and idle:
            j = min(idle)  # one that walked already: its copy of the digests is loaded
            idle.discard(j)
            task, fd = self.queue.pop(0)
            try:
                send_fds(self.socks[j], task, fd)
            finally:
                os.close(fd)
            self.relayed += 1
        if len(idle) == len(self.socks):
            self.stopped = True
            for s in self.socks:
                s.send(marshal.dumps(("stop",)))
        else:
            self.flag[3] = min(len(self.socks) - len(idle), 255)
            if idle and self.share:
                self.flag[0] = (self.flag[0] + 1) % 256  # a process wants work
        return True

    def close(self) -> None:
        """Idempotent. Closing early makes the children's next send fail, and they exit
        (an error batches() does not report: the walk's answer was not wanted)."""
        if self.memfd >= 0:  # an early walk whose digests never came: it ends
            self.flag[1] = ABANDONED
            os.close(self.memfd)
            self.memfd = -1
        for _task, fd in self.queue:
            os.close(fd)
        self.queue = []
        for s in self.socks:
            # the peer sees EOF even where a copy of this end lives on (a process
            # forked after the walk's: the feeders), so a waiting child exits
            with contextlib.suppress(OSError):
                s.shutdown(SHUT_RDWR)
            s.close()
        self.socks = []
        for pid, to, frm in self.procs:
            forkpipe.close(to)
            forkpipe.close(frm)
            forkpipe.reap(pid)
        self.procs = []
