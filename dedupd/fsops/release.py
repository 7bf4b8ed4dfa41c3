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

Only on the local filesystems of LOCAL: there a held file that lost its name has no
name at all. An NFS client renames it instead (".nfsXXXX", removed at the last
close: a crash in between leaves it on the server), and a filesystem not listed may
do the like; there, and wherever the mount cannot be told, names go the plain way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading

from dedupd.files import mounts

LIMIT = 64  # descriptors waiting to be closed, at most
_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
LOCAL = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "zfs",
                   "fuse.zfs"})


class Releaser:
    """Closes held descriptors in its own thread (started by the first one); close()
    waits until every one is closed. One owner, one thread handing descriptors in."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._q: queue.Queue[int | None] = queue.Queue(limit)
        self._thread: threading.Thread | None = None
        self._local: dict[int, bool] = {}  # st_dev -> on a filesystem of LOCAL

    def hold(self, dir_fd: int, name: bytes, dev: int) -> int | None:
        """A descriptor of the entry `name` in dir_fd itself (a symlink is not followed),
        to check with fstat and, once the name is unlinked, to hand to release(); None
        when dir_fd (whose files have st_dev dev) is not on a filesystem of LOCAL, or no
        descriptor is left: the caller then unlinks the plain way.
        FileNotFoundError if there is no such entry."""
        local = self._local.get(dev)
        if local is None:
            local = self._local[dev] = _on_local(dir_fd)
        if not local:
            return None
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


def _on_local(dir_fd: int) -> bool:
    """Whether the mount dir_fd was reached through has a filesystem of LOCAL."""
    try:
        m = mounts.mount_of_fd(dir_fd)
    except OSError:
        return False
    return m is not None and m.fstype in LOCAL
