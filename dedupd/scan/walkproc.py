"""The walk in a forked process: batches of FileEvents come back through a pipe.

A walk is Python-bound; so is recording its batches in the index. In one
interpreter they take turns (and lose more to switching); in two processes
they run side by side on two cores. Same walk, same events, same counters:
only where it runs changes (dedupd.forkpipe for the process rules).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from dedupd import forkpipe
from dedupd.files.events import FileEvent, Problem, WalkStats
from dedupd.forkpipe import ChildFailed, Wire
from dedupd.scan.walk import DirListed, WalkOptions, walk, walk_listed

_COUNTERS = [f.name for f in dataclasses.fields(WalkStats) if f.name != "problems"]


def _event(ev: FileEvent | DirListed) -> Wire:
    if isinstance(ev, DirListed):
        return (ev.path, ev.digest, ev.files, ev.same)
    return tuple(ev)  # marshal takes a plain tuple only


def _item(t: Wire) -> FileEvent | DirListed:
    return DirListed(*t) if len(t) == 4 else FileEvent._make(t)


def _child(_in: int, out: int, roots: Sequence[bytes], opts: WalkOptions, n: int,
           known: Mapping[bytes, tuple[bytes, int]] | None) -> None:
    forkpipe.quiet_gc()  # the walk holds a directory's files at a time, no cycles
    stats = WalkStats()
    batch: list[Wire] = []
    files = nbytes = 0  # running totals for a progress display, counted on this core
    events = walk(roots, opts, stats) if known is None else walk_listed(roots, opts, stats,
                                                                         known)
    for ev in events:
        batch.append(_event(ev))
        if isinstance(ev, DirListed):
            files += ev.files if ev.same else 0
        else:
            files += 1
            nbytes += ev.size
        if len(batch) >= n:
            forkpipe.send(out, ("batch", files, nbytes, batch))
            batch = []
    if batch:
        forkpipe.send(out, ("batch", files, nbytes, batch))
    forkpipe.send(out, ("end", [getattr(stats, k) for k in _COUNTERS],
                        [(p.path, p.reason, p.detail) for p in stats.problems]))


class ForkedWalk:
    """walk(roots, opts) in a child (walk_listed with `known` digests: DirListed
    items among the events); batches() yields lists of about n events, then
    `stats` holds the walk's counters. After each batch, `files` and `nbytes` are
    the files walked so far (those of unchanged directories included) and their
    bytes. Construct inside the scan's handles.anchored."""

    def __init__(self, roots: Sequence[bytes], opts: WalkOptions, n: int,
                 known: Mapping[bytes, tuple[bytes, int]] | None = None) -> None:
        self.stats = WalkStats()
        self.files = self.nbytes = 0
        self.pid, self.to, self.frm = forkpipe.spawn(
            lambda i, o: _child(i, o, roots, opts, n, known))

    def batches(self) -> Iterator[list[Any]]:
        ended = False
        try:
            while (msg := forkpipe.recv(self.frm)) is not None:
                if msg[0] == "batch":
                    _, self.files, self.nbytes, items = msg
                    yield [_item(t) for t in items]
                elif msg[0] == "end":
                    ended = True
                    for k, v in zip(_COUNTERS, msg[1], strict=True):
                        setattr(self.stats, k, v)
                    self.stats.problems = [Problem(*p) for p in msg[2]]
                else:
                    raise ChildFailed(f"the walk failed: {msg[1]}")
        finally:
            self.close()
        if not ended:
            raise ChildFailed("the walk process died")

    def close(self) -> None:
        """Idempotent. Closing early makes the child's next send fail, and it exits
        (an error batches() does not report: the walk's answer was not wanted)."""
        if self.pid:
            forkpipe.close(self.to)
            forkpipe.close(self.frm)
            forkpipe.reap(self.pid)
            self.pid = 0
