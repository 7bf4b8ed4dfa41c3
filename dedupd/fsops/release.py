"""Unlinked files let go of beside the caller: their blocks freed in another thread.

When a file's last name is unlinked, the kernel frees its blocks inside the unlink
itself (ext4: about 60 us for a file of a few hundred KiB, half the time of a hardlink
batch's swaps on the bench tree, issue 16). A name unlinked while a descriptor still
holds its inode frees nothing yet: the blocks go when that descriptor is closed. So a
caller that holds the inode (an O_PATH descriptor: no read access needed, no FIFO or
device opened) before it unlinks the name can hand the closing to a `Releaser`, whose
thread closes descriptors one after the other while the caller goes on (os.close
releases the interpreter lock: the freeing runs in the kernel on another core).

Nothing about names changes: the check and the unlink are the caller's, exactly as
without it. A kill -9 closes the descriptors with the process, and the kernel frees
the blocks then. At most LIMIT inodes wait at once (then the caller waits for the
thread): a batch never holds more descriptors than that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading

LIMIT = 64  # descriptors waiting to be closed, at most
_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Releaser:
    """Closes held descriptors in its own thread (started by the first one); close()
    waits until every one is closed. One owner, one thread handing descriptors in."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._q: queue.Queue[int | None] = queue.Queue(limit)
        self._thread: threading.Thread | None = None

    def hold(self, dir_fd: int, name: bytes) -> int | None:
        """A descriptor of the entry `name` in dir_fd itself (a symlink is not followed),
        to check with fstat and, once the name is unlinked, to hand to release(); None
        when no descriptor is left (the caller then unlinks the plain way).
        FileNotFoundError if there is no such entry."""
        try:
            return os.open(name, _FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                return None
            raise

    def release(self, fd: int) -> None:
        """fd closed by the thread (the inode freed there if that was its last hold)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="release", daemon=True)
            self._thread.start()
        self._q.put(fd)

    def _run(self) -> None:
        while (fd := self._q.get()) is not None:
            with contextlib.suppress(OSError):  # each fd is ours, closed once: never seen
                os.close(fd)

    def close(self) -> None:
        """Every descriptor handed in is closed (and its file freed) when this returns."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
