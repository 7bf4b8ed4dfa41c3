"""One linker per volume at a time: an exclusive flock on the volume's root.

A pass (and `dedupd recover`) holds it for its whole run, so recovery can never
mistake another live process's operation for an interrupted one. The kernel
drops the lock when the holder dies, even by kill -9.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from dedupd.errors import TemporaryFailure


@contextmanager
def volume_lock(root: bytes | str) -> Iterator[None]:
    """Hold the volume lock; TemporaryFailure (exit 75) if someone else holds it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TemporaryFailure(f"{os.fsdecode(root)}: another dedupd pass or recovery "
                                   "is working on this volume; try again later") from None
        yield
    finally:
        os.close(fd)


def lock_root(kind: str, path: os.PathLike[str] | str,
              branches: tuple[os.PathLike[str] | str, ...]) -> bytes:
    """The directory a volume is locked on (a pool: its first branch)."""
    return os.fsencode(branches[0] if kind == "pool" and branches else path)
