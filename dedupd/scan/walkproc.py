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
it lists (walk.DirHeld: at most HOLD_MAX entries, then it waits), and decides
it once they come.
"""

from __future__ import annotations

import contextlib
import functools
import marshal
import mmap
import os
import select
import struct

# the socket module's C core: socket.py's start-up (enums made of every constant)
# is a few ms of every `dedupd scan`, paid before its walk is forked
from _socket import AF_UNIX, CMSG_LEN, SCM_RIGHTS, SHUT_RDWR, SOCK_SEQPACKET, SOL_SOCKET, socketpair
from _socket import socket as Socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from resource import RUSAGE_SELF, getrusage
from typing import Any

from dedupd import forkpipe
from dedupd.files.events import FileEvent, Problem, WalkStats
from dedupd.forkpipe import ChildFailed, Wire
from dedupd.scan.walk import (
    PENDING,
    DirHeld,
    DirListed,
    Known,
    WalkOptions,
    decided,
    walk,
    walk_from,
    walk_listed,
)

_COUNTERS = WalkStats.COUNTERS
_MSG = 1 << 18  # a task: a path and up to walk.DONATE_MAX names with their identities
BATCH = 2000  # events a batch (the scanner's RECORD_BATCH)
# processes of a rescan's walk (one that has digests to compare): its directories
# are mostly only listed, so the walk is the scan; a first scan's walk is one
# process beside the index writer and the feeders. Four, on two cores: from a cold
# cache the walk waits for the disk, and four keep more requests in flight (the
# real tree of docs/schema.md: 1.16 s with one, 0.87 with two, 0.65 with four).
# From a warm one, no more of them walk at once than there are cores (CORES): each
# one more costs CPU (its own copy of the digests, its share of the tree handed
# over: 0.03 s on that tree) and no time. Which one it is, the walk itself tells:
# a process that blocks while it walks (voluntary context switches, counted each
# IO_EVERY directories: IO_SWITCHES or more) waits for the disk, and from then on
# every process may walk (flag[2], _Share.wanted)
RESCAN_WALKERS = 4
CORES = max(1, len(os.sched_getaffinity(0)))
IO_EVERY, IO_SWITCHES = 16, 4
HOLD_MAX = 20_000  # listed entries an early walk process holds before it waits
_PUBLISHED, _ABANDONED = 1, 2  # flag[1] of an early walk: the digests are there / never
# the shared flag bytes: [0] changes each time a process runs out of work, [1]: _Later's,
# [2]: set once a process waited for the disk, [3]: processes walking (the parent's count)
_FLAGS = 4
_FD = struct.Struct("i")


def _send_fds(sock: Socket, data: bytes, fd: int) -> None:
    """data, with a copy of descriptor fd for the peer (SCM_RIGHTS)."""
    sock.sendmsg([data], [(SOL_SOCKET, SCM_RIGHTS, _FD.pack(fd))])


def _recv_fds(sock: Socket) -> tuple[bytes, list[int]]:
    """One message (b"" at EOF) and the descriptors that came with it (at most one)."""
    data, anc, _flags, _addr = sock.recvmsg(_MSG, CMSG_LEN(_FD.size))
    fds = [fd for level, kind, raw in anc if level == SOL_SOCKET and kind == SCM_RIGHTS
           for (fd,) in _FD.iter_unpack(raw[:len(raw) - len(raw) % _FD.size])]
    return data, fds



def _event(ev: FileEvent | DirListed) -> Wire:
    return tuple(ev)  # marshal takes a plain tuple only


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


class _Sender:
    """A walk's events to the parent in batches of about n, with running totals of
    the files walked (those of unchanged directories included) and their bytes."""

    def __init__(self, out: int, n: int) -> None:
        self.out, self.n = out, n
        self.batch: list[Wire] = []
        self.files = self.nbytes = 0

    def put(self, ev: FileEvent | DirListed) -> None:
        self.batch.append(_event(ev))
        if isinstance(ev, DirListed):
            self.files += ev.files if ev.same else 0
        else:
            self.files += 1
            self.nbytes += ev.size
        if len(self.batch) >= self.n:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            forkpipe.send(self.out, ("batch", self.files, self.nbytes, self.batch))
            self.batch = []

    def end(self, stats: WalkStats) -> None:
        self.flush()
        forkpipe.send(self.out, ("end", [getattr(stats, k) for k in _COUNTERS],
                                 [(p.path, p.reason, p.detail) for p in stats.problems]))


class _Later:
    """walk.Known of an early walk process: PENDING until the parent has published
    the index's digests (ForkedWalk.start: marshalled into the memfd, then flag[1]
    set and a byte written to each process's input), then those."""

    def __init__(self, flag: mmap.mmap, memfd: int, wake: int) -> None:
        self.flag, self.memfd, self.wake = flag, memfd, wake
        self.map: dict[bytes, tuple[bytes, int]] | None = None

    def get(self, path: bytes, /) -> tuple[bytes, int] | None:
        m = self.map
        if m is None:
            if not self.flag[1]:
                return PENDING
            m = self._load()
        return m.get(path)

    def wait(self) -> dict[bytes, tuple[bytes, int]]:
        """The digests, once published (blocks until then)."""
        while not self.flag[1]:
            if not os.read(self.wake, 1):
                raise ChildFailed("the scan ended before its walk")
        return self.map if self.map is not None else self._load()

    def _load(self) -> dict[bytes, tuple[bytes, int]]:
        if self.flag[1] != _PUBLISHED:
            raise ChildFailed("the scan ended before its walk")
        data, size = b"", os.fstat(self.memfd).st_size
        while len(data) < size:
            data += os.pread(self.memfd, size - len(data), len(data))
        self.map = marshal.loads(data)
        os.close(self.memfd)
        return self.map


def _send_walk(events: Iterable[FileEvent | DirListed | DirHeld], sender: _Sender,
               later: _Later | None, min_size: int) -> None:
    """A walk's events to the sender; the directories it held (DirHeld: listed
    before the digests came) once they are there, in listing order."""
    held: list[DirHeld] = []
    n = 0
    for ev in events:
        if isinstance(ev, DirHeld):
            held.append(ev)
            n += len(ev.items)
            if n < HOLD_MAX:
                continue
        else:
            sender.put(ev)
        if held and later is not None and (later.map is not None or n >= HOLD_MAX):
            _send_held(held, sender, later.wait(), min_size)
            n = 0
    if held and later is not None:
        _send_held(held, sender, later.wait(), min_size)


def _send_held(held: list[DirHeld], sender: _Sender, known: Known, min_size: int) -> None:
    for h in held:
        for ev in decided(h, known, min_size):
            sender.put(ev)
    held.clear()


def _child(_in: int, out: int, roots: Sequence[bytes], opts: WalkOptions, n: int,
           known: Mapping[bytes, tuple[bytes, int]] | None) -> None:
    forkpipe.quiet_gc()  # the walk holds a directory's files at a time, no cycles
    stats = WalkStats()
    sender = _Sender(out, n)
    events = walk(roots, opts, stats) if known is None else walk_listed(roots, opts, stats,
                                                                         known)
    _send_walk(events, sender, None, opts.min_size)
    sender.end(stats)


class _Share:
    """walk.Donor of one walk process. `flag` (shared with the parent) changes each
    time a process runs out of work; this one serves each change once, while fewer
    processes walk than there are cores, or at once when the walk waits for the
    disk (see RESCAN_WALKERS)."""

    def __init__(self, flag: mmap.mmap, sock: Socket) -> None:
        self.flag, self.sock, self.served = flag, sock, 0
        self.dirs, self.switches = 0, _switches()

    def wanted(self) -> bool:
        flag = self.flag
        self.dirs += 1
        if self.dirs % IO_EVERY == 0 and not flag[2]:  # once per directory: cheap first
            was, self.switches = self.switches, _switches()
            if self.switches - was >= IO_SWITCHES:
                flag[2] = 1
        return flag[0] != self.served and (flag[2] != 0 or flag[3] < CORES)

    def give(self, fd: int, path: bytes, subdirs: list[tuple[bytes, int, int]]) -> None:
        self.served = self.flag[0]
        _send_fds(self.sock, marshal.dumps(("task", path, subdirs)), fd)


def _switches() -> int:
    """This process's voluntary context switches so far: each time it blocked."""
    return getrusage(RUSAGE_SELF).ru_nvcsw


def _worker(k: int, _in: int, out: int, *, roots: Sequence[bytes], opts: WalkOptions,
            n: int, known: Mapping[bytes, tuple[bytes, int]] | None, flag: mmap.mmap,
            memfd: int, socks: list[tuple[Socket, Socket]]) -> None:
    """Walk process k: the roots (k = 0), then each subtree the parent hands over,
    until told to stop; "done" after each. known None: the digests come later
    (memfd, see _Later)."""
    for j, (theirs, mine) in enumerate(socks):
        theirs.close()
        if j != k:
            mine.close()
    sock = socks[k][1]
    forkpipe.quiet_gc()
    stats = WalkStats()
    sender = _Sender(out, n)
    share = _Share(flag, sock)
    later = _Later(flag, memfd, _in) if known is None else None
    digests: Known = later or known or {}
    if k == 0:
        _send_walk(walk_listed(roots, opts, stats, digests, share), sender, later,
                   opts.min_size)
    while True:
        sender.flush()  # what this process holds goes out before it waits
        sock.send(marshal.dumps(("done",)))
        data, fds = _recv_fds(sock)
        msg: Any = marshal.loads(data) if data else ("stop",)
        if msg[0] == "stop":
            for fd in fds:
                os.close(fd)
            break
        share.served = flag[0]  # a request made before this task came was this one's
        share.switches = _switches()  # the wait for this task was no disk's
        _send_walk(walk_from(fds[0], msg[1], msg[2], opts, stats, digests, share), sender,
                   later, opts.min_size)
    sender.end(stats)


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
            self.procs.append(forkpipe.spawn(lambda i, o: _child(i, o, roots, opts, n, known)))
            return
        self.flag = mmap.mmap(-1, _FLAGS)  # each process but the first starts "done"
        if later:
            self.memfd = os.memfd_create("dedupd-known", os.MFD_CLOEXEC)
        self.stopped = False
        pairs = [socketpair(AF_UNIX, SOCK_SEQPACKET)
                 for _ in range(workers)]
        try:
            for k in range(workers):
                self.procs.append(forkpipe.spawn(functools.partial(
                    _worker, k, roots=roots, opts=opts, n=n,
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
        self.flag[1] = _PUBLISHED
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
                    for name, v in zip(_COUNTERS, msg[1], strict=True):
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
        data, fds = _recv_fds(self.socks[k])
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
                _send_fds(self.socks[j], task, fd)
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
            self.flag[1] = _ABANDONED
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
