"""A small file replaced whole, at once: written under a fresh temp name in its
directory, then renamed over it, so that a reader sees the old content or the new,
never a part (`dedupd metrics -o`'s file for a collector, a backup's manifest on a
local rclone remote).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dedupd import testpoints

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def replace_file(dest: Path, data: bytes, mode: int = 0o644) -> None:
    """dest replaced by data, a file of `mode` whatever the umask. dest's directory is
    looked up once, and the temp name made, filled, renamed over dest (or removed
    again on any failure) in that very directory, whatever its path names meanwhile
    (replace_at). Raises OSError; a missing directory is one (the caller makes it if
    it should)."""
    dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_at(dfd, dest.name, data, mode)
    finally:
        os.close(dfd)


def replace_at(dfd: int, name: str | bytes, data: bytes, mode: int = 0o644) -> None:
    """The entry `name` of the directory dfd replaced by a new file holding data, of
    `mode` whatever the umask: what the name led to before is never opened nor
    written (another name of it keeps its content). The temp name,
    ".<name>.<random>.partial", is created new (O_EXCL | O_NOFOLLOW: a symlink
    planted in a shared directory is never written through) and ends in no suffix
    a reader looks for. Raises OSError."""
    tmp = f".{os.fsdecode(name)}.{os.urandom(6).hex()}.partial"
    fd = os.open(tmp, _TMP_FLAGS, 0o600, dir_fd=dfd)
    try:
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
        finally:
            os.close(fd)
        testpoints.at("replace", os.fsencode(tmp))
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
