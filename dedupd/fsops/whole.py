"""A small file replaced whole, at once: written under a fresh temp name in its
directory, then renamed over it, so that a reader sees the old content or the new,
never a part (`dedupd metrics -o`'s file for a collector, a backup's manifest on a
local rclone remote).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(dest: Path, data: bytes, mode: int = 0o644) -> None:
    """dest replaced by data, a file of `mode` whatever the umask. The temp name,
    ".<name>.<random>.partial" in dest's directory, is created new (O_EXCL |
    O_NOFOLLOW: a symlink planted in a shared directory is never written through),
    ends in no suffix a reader looks for, and is removed again on any failure.
    Raises OSError; a missing directory is one (the caller makes it if it should)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    try:
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
