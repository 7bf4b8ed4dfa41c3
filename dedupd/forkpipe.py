"""Forked helper processes that talk over pipes in length-prefixed marshal frames.

Why processes: threads of one interpreter fight over its lock (a scan's walk
took 2.6 s among its index writer and reader threads, 0.3 s alone). Why fork:
a child starts at once with the parent's state (configuration, the anchors of
dedupd.handles) and needs no importable entry point.

Contract: fork before starting threads that may hold a lock the child needs.
A child never returns into the caller's code: it leaves by os._exit, after
sending ("err", traceback) if its work raised. It ignores SIGINT (the parent
decides) and sees EOF on its input when the parent closes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import marshal
import os
import struct

# signal's C core: signal.py makes enums of its constants (the enum module, before
# `dedupd scan` forks its walk)
from _signal import SIG_IGN, SIGINT
from _signal import signal as set_handler

from dedupd.tuples import TYPE_CHECKING

if TYPE_CHECKING:  # imported before `dedupd scan` forks its walk: no typing (tuples.py)
    from collections.abc import Callable, Iterator
    from typing import Any

    Wire = Any  # what marshal carries: tuples and lists of ints, bytes, floats, None
else:
    Wire = object  # only named in annotations

_LEN = struct.Struct("=I")
PIPE_BYTES = 1 << 20  # a batch or two in flight without blocking the sender
# Format 2, not the default 4: 3 and 4 track every object written (for references
# to it), which more than doubles the cost of dumping a batch of file tuples
# (59,866 files: 0.042 s against 0.018); what goes through these pipes is trees
# of tuples without shared parts worth a reference
MARSHAL_VERSION = 2


class ChildFailed(RuntimeError):
    """A helper process died or raised; its traceback is the message."""


def frame(msg: Wire) -> bytes:
    """msg as recv reads it back: its length, then its marshal bytes."""
    data = marshal.dumps(msg, MARSHAL_VERSION)
    return _LEN.pack(len(data)) + data


def send(fd: int, msg: Wire) -> None:
    view = memoryview(frame(msg))
    while view:
        view = view[os.write(fd, view):]


def _exact(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            return None
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def recv(fd: int) -> Wire:
    """The next frame, or None at EOF."""
    head = _exact(fd, _LEN.size)
    body = None if head is None else _exact(fd, _LEN.unpack(head)[0])
    return None if body is None else marshal.loads(body)


GC_THRESHOLDS = (20_000, 20, 20)  # the defaults are (700, 10, 10)


def quiet_gc() -> None:
    """For a child that makes many objects and few cycles (a walk, a feeder): what
    the parent had at the fork is never garbage there, so it goes out of the
    collector's sight (no scan of it, no copy-on-write of its pages), and
    collections come rarer (a feeder: 10% less CPU; a walk: see walkproc)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextlib.contextmanager
def rare_gc() -> Iterator[None]:
    """quiet_gc for the parent, for the duration of a block (a scan): what exists
    when it starts is frozen (its children, forked inside, inherit that), and
    collections come rarer while it records batch after batch; both undone after,
    so a long-lived caller's later garbage is collected as usual. Not for blocks
    that overlap in one process (the thresholds are the process's): `dedupd scan`
    runs one scan."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


_ours: set[int] = set()  # the parent's ends of every live child's pipes


def spawn(work: Callable[[int, int], None]) -> tuple[int, int, int]:
    """Fork a child running work(input_fd, output_fd); return (pid, the write end of
    its input, the read end of its output). The child closes the parent's ends of
    other children's pipes (an open write end would keep them from seeing EOF)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    for fd in (w1, w2):
        with contextlib.suppress(OSError):  # the default size: more switches only
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child's coverage is not collected)
        code = 0
        try:
            set_handler(SIGINT, SIG_IGN)
            for fd in (w1, r2, *_ours):
                os.close(fd)
            work(r1, w2)
        except BaseException:
            code = 1
            with contextlib.suppress(BaseException):
                import traceback  # here: 2 ms of `dedupd scan` before its walk's fork

                send(w2, ("err", traceback.format_exc()))
        finally:
            os._exit(code)
    os.close(r1)
    os.close(w2)
    _ours.update((w1, r2))
    return pid, w1, r2


def close(fd: int) -> None:
    """Close the parent's end of a child's pipe."""
    _ours.discard(fd)
    os.close(fd)


def reap(pid: int) -> bool:
    """Wait for a child; True when it exited 0."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
