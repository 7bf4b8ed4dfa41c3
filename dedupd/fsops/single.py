"""A file dedupd writes in place at a name others may reach (the archive's lock,
the daemon's pid file, the detached daemon's log): opened only when that name is
a regular file with that one name, never through a symlink, a FIFO, a device or
another name of some other file (a user who may write the directory could plant
any of them to aim dedupd's writes elsewhere).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# O_NONBLOCK: a FIFO planted at the name must not hang the open (it is then refused)
_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotSingle(Exception):
    """The name is not a regular file (of the uid asked for) with one name.

    symlink: it is a symbolic link. linked: it is a regular file as asked but with
    other names too (a hardlink planted there, or an archive copied with `cp -al`)."""

    def __init__(self, symlink: bool = False, linked: bool = False) -> None:
        super().__init__("is a symbolic link" if symlink else "not a regular file with one name")
        self.symlink, self.linked = symlink, linked


def open_single(name: bytes | str | Path, flags: int, mode: int = 0o600, *,
                dir_fd: int | None = None, uid: int | None = None,
                linked: bool = False) -> int:
    """The fd (blocking, close-on-exec) of name (in the directory dir_fd when given)
    opened with flags (O_CREAT: made with mode when missing), when it is a regular
    file owned by uid (when given) with this one name; linked=True accepts other
    names too, for a caller that checks st_nlink and never writes such a file.
    Raises NotSingle for anything else at the name, OSError when the open fails
    otherwise (no directory, no permission)."""
    try:
        fd = os.open(name, flags | _FLAGS, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotSingle(symlink=True) from None
        if e.errno in (errno.EISDIR, errno.ENXIO):  # a directory, a FIFO (O_WRONLY)
            raise NotSingle() from None
        raise
    st = os.fstat(fd)
    ok = stat.S_ISREG(st.st_mode) and (uid is None or st.st_uid == uid)
    if not ok or (st.st_nlink != 1 and not linked):
        os.close(fd)
        raise NotSingle(linked=ok)
    os.set_blocking(fd, True)
    return fd
