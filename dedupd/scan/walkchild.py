"""What runs inside the walk processes that walkproc.ForkedWalk forks: the walk,
its events sent to the parent in batches (Sender), the digests of an early walk
waited for (Later), and a rescan's subtrees shared among the processes (Share,
worker). The parent's side, and the protocol as a whole, are in walkproc.
"""

from __future__ import annotations

import marshal
import mmap
import os
import struct

# the socket module's C core: socket.py's start-up (enums made of every constant)
# is a few ms of every `dedupd scan`, paid before its walk is forked
from _socket import CMSG_LEN, SCM_RIGHTS, SOL_SOCKET
from _socket import socket as Socket
from operator import itemgetter
from resource import RUSAGE_SELF, getrusage

from dedupd import forkpipe
from dedupd.files.events import FileEvent, WalkStats
from dedupd.forkpipe import ChildFailed
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
from dedupd.tuples import TYPE_CHECKING

if TYPE_CHECKING:  # imported before `dedupd scan` forks its walk: no typing (tuples.py)
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

_MSG = 1 << 18  # a task: a path and up to walk.DONATE_MAX names with their identities
# a warm rescan's walk: no more processes at once than CORES, until one blocks
# IO_SWITCHES times in IO_EVERY directories (the disk): see walkproc.RESCAN_WALKERS
CORES = max(1, len(os.sched_getaffinity(0)))
IO_EVERY, IO_SWITCHES = 16, 4
HOLD_MAX = 20_000  # listed entries an early walk process holds before it waits
PUBLISHED, ABANDONED = 1, 2  # flag[1] of an early walk: the digests are there / never
# the shared flag bytes: [0] changes each time a process runs out of work, [1]: _Later's,
# [2]: set once a process waited for the disk, [3]: processes walking (the parent's count)
FLAGS = 4
_FD = struct.Struct("i")


def send_fds(sock: Socket, data: bytes, fd: int) -> None:
    """data, with a copy of descriptor fd for the peer (SCM_RIGHTS)."""
    sock.sendmsg([data], [(SOL_SOCKET, SCM_RIGHTS, _FD.pack(fd))])


def recv_fds(sock: Socket) -> tuple[bytes, list[int]]:
    """One message (b"" at EOF) and the descriptors that came with it (at most one)."""
    data, anc, _flags, _addr = sock.recvmsg(_MSG, CMSG_LEN(_FD.size))
    fds = [fd for level, kind, raw in anc if level == SOL_SOCKET and kind == SCM_RIGHTS
           for (fd,) in _FD.iter_unpack(raw[:len(raw) - len(raw) % _FD.size])]
    return data, fds


_FOURTH = itemgetter(3)


class _Sender:
    """A walk's events to the parent in batches of about n, with running totals of
    the files walked (those of unchanged directories included) and their bytes.
    put() only appends (once per file of a tree): a batch is counted and turned
    into plain tuples at flush, each step one pass in C."""

    def __init__(self, out: int, n: int) -> None:
        self.out, self.n = out, n
        self.batch: list[FileEvent | DirListed] = []
        self.files = self.nbytes = 0

    def put(self, ev: FileEvent | DirListed) -> None:
        batch = self.batch
        batch.append(ev)
        if len(batch) >= self.n:
            self.flush()

    def flush(self) -> None:
        batch = self.batch
        if batch:
            listed = [e for e in batch if type(e) is DirListed]
            if listed:
                self.files += sum(d.files for d in listed if d.same) - len(listed)
                # [3] is a FileEvent's size, and a DirListed's `same` (1 when true)
                self.nbytes -= sum(d.same for d in listed)
            self.files += len(batch)
            self.nbytes += sum(map(_FOURTH, batch))
            wire = list(map(tuple, batch))  # marshal takes plain tuples only
            self.batch = []
            forkpipe.send(self.out, ("batch", self.files, self.nbytes, wire))

    def end(self, stats: WalkStats) -> None:
        self.flush()
        forkpipe.send(self.out, ("end", [getattr(stats, k) for k in WalkStats.COUNTERS],
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
        if self.flag[1] != PUBLISHED:
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


def child(_in: int, out: int, roots: Sequence[bytes], opts: WalkOptions, n: int,
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
        send_fds(self.sock, marshal.dumps(("task", path, subdirs)), fd)


def _switches() -> int:
    """This process's voluntary context switches so far: each time it blocked."""
    return getrusage(RUSAGE_SELF).ru_nvcsw


def worker(k: int, _in: int, out: int, *, roots: Sequence[bytes], opts: WalkOptions,
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
        data, fds = recv_fds(sock)
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
