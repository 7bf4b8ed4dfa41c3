"""A filesystem's writes made durable at once: syncfs(2), one journal commit for a
whole batch instead of an fsync per file. Its own module (imports handles only): a
backup's local remote syncs its manifest without importing the copy path."""

from __future__ import annotations

import ctypes
import errno
import os

from dedupd import handles


def sync_filesystem(path: bytes) -> None:
    """Make everything written to path's filesystem durable (sync_fd_filesystem)."""
    fd = handles.open_dir(path)
    try:
        sync_fd_filesystem(fd)
    finally:
        os.close(fd)


def sync_fd_filesystem(fd: int) -> None:
    """Make everything written to the filesystem of an open fd durable (syncfs(2));
    raise OSError when it fails (EIO: what was written may be lost)."""
    syncfs = getattr(handles.LIBC, "syncfs", None)
    if syncfs is not None and syncfs(fd) != 0:
        err = ctypes.get_errno()
        if err != errno.ENOSYS:  # sync(2) reports nothing: never in place of a failure
            raise OSError(err, f"syncing the filesystem: {os.strerror(err)}")
        syncfs = None
    if syncfs is None:
        os.sync()  # no syncfs: the global sync is slower but as safe
