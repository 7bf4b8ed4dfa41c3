"""Feeders in forked processes: the scan's early hashing off the walk's interpreter.

Threads of one interpreter fight over its lock: inside a scan whose walk,
index writer and readers were threads, the walk took 2.6 s where it takes
0.3 s alone. Here each of `n` children runs a `Feeder` (the one engine) over
its share of the sizes (size modulo n: a size group never spans two), fed with
recorded batches through a pipe; it answers with the hashes it learnt and, at
the end, its groups and counters. The parent only partitions and forwards.

Contract: construct before starting any thread that may hold a lock the
children need (the scan forks before its record thread starts), inside the
`handles.anchored` of the scan (children inherit the anchors). put() and
take() are called from one thread; a child's failure is raised by close().
Children never touch the index (the parent writes what they learn), ignore
SIGINT (the parent decides) and leave by os._exit when their pipe closes.
"""

from __future__ import annotations

import functools
import gc
import select
import threading
from collections.abc import Sequence

from dedupd import forkpipe
from dedupd.files.events import Problem
from dedupd.forkpipe import ChildFailed, Wire, reap, recv, send, spawn
from dedupd.hashing.engine import Feeder
from dedupd.hashing.rule import Group, Key
from dedupd.hashing.stats import HashStats, Stability
from dedupd.index.store import HashUpdate, IndexedFile

# marshal takes and gives plain tuples only; these make the NamedTuples back from
# them in C (a NamedTuple's _make is a Python function: 3x the cost, once per file)
_file = functools.partial(tuple.__new__, IndexedFile)
_update = functools.partial(tuple.__new__, HashUpdate)


def _stats(st: HashStats) -> Wire:
    return (st.files_hashed, st.full_hashes, st.bytes_hashed, st.bytes_read, st.pending,
            st.pending_first, st.pending_last,
            [(p.path, p.reason, p.detail) for p in st.problems])


def _unstats(t: Wire) -> HashStats:
    return HashStats(t[0], t[1], t[2], t[3], t[4], t[5], t[6], [Problem(*p) for p in t[7]])


def _child(rfd: int, wfd: int, stability: Stability, limit: int) -> None:
    forkpipe.quiet_gc()  # what the parent had at the fork: out of the collector's sight
    # The feeder keeps every inode it is given and makes no reference cycles (a feeder
    # over the real bench tree leaves nothing for gc.collect()): collections would
    # only walk what it holds, 20-25 ms a feeder there.
    gc.disable()
    feeder = Feeder(stability, limit)
    while True:
        msg = recv(rfd)
        if msg is None:
            break
        ups, gone = feeder.put(list(map(_file, msg)))
        if ups or gone:
            send(wfd, ("h", list(map(tuple, ups)), gone))
    groups = [] if feeder.overflow else feeder.groups()
    send(wfd, ("end", feeder.overflow,
               [(g.size, g.full, list(map(tuple, g.files))) for g in groups],
               _stats(feeder.stats)))


class ForkedFeeders:
    """n children each running a Feeder (see the module docstring)."""

    def __init__(self, n: int, stability: Stability, limit: int) -> None:
        self.n = n
        self.to: list[int] = []
        self.pids: list[int] = []
        self.lock = threading.Lock()
        self.updates: list[HashUpdate] = []
        self.gone: list[Key] = []
        self.ends: list[Wire] = []
        self.errors: list[str] = []
        froms = [self._spawn(stability, limit) for _ in range(n)]
        self.collector = threading.Thread(target=self._collect, args=(froms,),
                                          name="hash-results", daemon=True)
        self.collector.start()

    def _spawn(self, stability: Stability, limit: int) -> int:
        """Fork one child; keep the write end of its input, return the read end of
        its answers."""
        pid, to, frm = spawn(lambda r, w: _child(r, w, stability, limit))
        self.to.append(to)
        self.pids.append(pid)
        return frm

    def put(self, batch: Sequence[IndexedFile]) -> None:
        n = self.n
        files: list[Wire] = list(map(tuple, batch))  # marshal takes a plain tuple only
        for k, fd in enumerate(self.to):
            share = files if n == 1 else [f for f in files if f[2] % n == k]
            if share:
                try:
                    send(fd, share)
                except BrokenPipeError:  # not stdout's (cli.main's silent exit 1)
                    raise ChildFailed("a hashing process died (killed?)") from None

    def take(self) -> tuple[list[HashUpdate], list[Key]]:
        """The hashes learnt (and inodes gone) since the last take."""
        with self.lock:
            out = self.updates, self.gone
            self.updates, self.gone = [], []
        return out

    def _collect(self, froms: list[int]) -> None:
        """Read every child's answers until each has closed its pipe."""
        open_fds = set(froms)
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [])
            for fd in ready:
                msg = recv(fd)
                if msg is None:
                    open_fds.discard(fd)
                    forkpipe.close(fd)
                    continue
                self._note(msg)

    def _note(self, msg: Wire) -> None:
        with self.lock:
            if msg[0] == "h":
                self.updates.extend(map(_update, msg[1]))
                self.gone.extend(msg[2])  # (dev, ino) tuples, as marshal was given them
            elif msg[0] == "end":
                self.ends.append(msg)
            else:
                self.errors.append(str(msg[1]))

    def close(self) -> tuple[list[Group] | None, HashStats]:
        """Wait for the children; their groups (None if one let go) and counters."""
        for fd in self.to:
            forkpipe.close(fd)
        self.to = []
        self.collector.join()
        failed = [pid for pid in self.pids if not reap(pid)]
        self.pids = []
        if self.errors or failed or len(self.ends) != self.n:
            raise ChildFailed("a hashing process failed: " + "\n".join(self.errors))
        stats = HashStats()
        groups: list[Group] | None = []
        for _, overflow, found, st in self.ends:
            stats.merge(_unstats(st))
            if overflow:
                groups = None
            elif groups is not None:
                groups.extend(Group(size, tuple(map(_file, files)), full)
                              for size, full, files in found)
        return groups, stats
