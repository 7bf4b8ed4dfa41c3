"""index_trees' walk in a forked process, its batches recorded by the run meanwhile.

A first import's index pass is a walk (a third of a million Python steps for
23,000 files) then a record of each batch (SQLite inserts): in one process they
take turns (0.25 s on the real bench tree), here they run side by side on two
cores (the copy helpers forked before are idle until the copies). Same walks,
same events, same batches (cut in the child exactly as index_trees cut them),
same counters and problems: only where the walk runs changes (dedupd.forkpipe's
rules; the child inherits the anchors of dedupd.handles and reads nothing but
directories).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence

from dedupd import forkpipe
from dedupd.errors import DedupdError
from dedupd.files.events import FileEvent, Problem, WalkStats
from dedupd.scan.walk import batches

# The walk's parts (sources, then archive), their events counted in the WalkStats given
Parts = Callable[[WalkStats], Sequence[Iterable[FileEvent]]]
# marshal gives plain tuples: the NamedTuples made back from them in C
_file = functools.partial(tuple.__new__, FileEvent)


class TreeWalk:
    """The events of parts(stats) walked in a child, in batches of n (each part's
    cut alone, as batches() cuts them). Construct before starting threads
    (forkpipe); close() whatever happens."""

    def __init__(self, parts: Parts, n: int) -> None:
        self.pid, self.to, self.frm = forkpipe.spawn(lambda _i, o: _child(o, parts, n))
        self.ended = False  # its "end" received: it exits on its own

    def batches(self, stats: WalkStats) -> Iterator[tuple[int, list[FileEvent]]]:
        """(part number, batch) in the walk's order. stats.files_seen counts as the
        walk goes (as of each batch, as it would in this process); the other
        counters and the problems are added at the end."""
        base = [getattr(stats, k) for k in WalkStats.COUNTERS]
        while True:
            msg = forkpipe.recv(self.frm)
            if msg is None:
                raise DedupdError("the walk failed: its process died")
            if msg[0] == "batch":
                stats.files_seen = base[0] + msg[2]
                yield msg[1], list(map(_file, msg[3]))
            elif msg[0] == "end":
                for k, was, v in zip(WalkStats.COUNTERS, base, msg[1], strict=True):
                    setattr(stats, k, was + v)
                stats.problems += [Problem(*p) for p in msg[2]]
                self.ended = True
                return
            else:  # ("err", its traceback): its last line says what
                raise DedupdError(f"the walk failed: {str(msg[1]).strip().splitlines()[-1]}")

    def close(self) -> None:
        """Idempotent. Early (a failing or interrupted run), the walk is stopped: it
        only reads directories, and would otherwise go on to its next send (a whole
        batch of a cold tree) before it learnt that nobody reads it."""
        if self.pid:
            forkpipe.close(self.to)
            forkpipe.close(self.frm)
            if not self.ended:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            forkpipe.reap(self.pid)
            self.pid = 0


def _child(out: int, parts: Parts, n: int) -> None:
    forkpipe.quiet_gc()  # the walk holds a directory's files at a time, no cycles
    stats = WalkStats()
    for k, events in enumerate(parts(stats)):
        for batch in batches(events, n):
            # marshal takes plain tuples only; files_seen as of this batch
            forkpipe.send(out, ("batch", k, stats.files_seen, list(map(tuple, batch))))
    forkpipe.send(out, ("end", [getattr(stats, c) for c in WalkStats.COUNTERS],
                        [tuple(p) for p in stats.problems]))
