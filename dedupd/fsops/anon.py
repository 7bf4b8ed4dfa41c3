"""Copies staged as files without a name (O_TMPFILE), linked to their name when placed.

A verified copy is written, made durable, read back and compared before it gets
its name (fsops/copy.py). Staged under a temp name, each copy costs a random
name, a directory entry made and later removed, and a sweep after a crash. An
O_TMPFILE file has no name until linkat(2) gives it one: a crash at any point
before the link leaves nothing (the filesystem frees the unlinked inode), and
the link never replaces an existing name (EEXIST), as link() of a temp name.

The link goes through /proc/self/fd/N with AT_SYMLINK_FOLLOW, which needs no
privilege (linkat's AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH). Where the
filesystem has no O_TMPFILE (FUSE, NFS, vfat, zfs-fuse), no hardlinks, or /proc
is missing, `open_in` says so (None) and the caller stages under a temp name.
Whether a filesystem can is probed once per device and process: an anonymous
file linked to a temp name (the shape remove_stale_temps sweeps) and unlinked.
"""

from __future__ import annotations

import contextlib
import os

from dedupd.fsops.archive_lock import TMP_PREFIX, TMP_SUFFIX

_TMPFILE = getattr(os, "O_TMPFILE", 0)
_FLAGS = _TMPFILE | os.O_RDWR | os.O_CLOEXEC
_PROBE = TMP_PREFIX + b"%s" + TMP_SUFFIX  # swept after a crash (remove_stale_temps)
_able: dict[int, bool] = {}  # st_dev -> anonymous files can be made and linked


def open_in(dfd: int, dev: int) -> int | None:
    """An anonymous file (mode 0600) in the directory dfd of filesystem dev, or None
    where that filesystem (or this system) cannot make and link one."""
    ok = _able.get(dev)
    if ok is None:
        ok = _able[dev] = _probe(dfd)
    if not ok:
        return None
    try:
        return os.open(".", _FLAGS, 0o600, dir_fd=dfd)
    except OSError:
        return None


def link(fd: int, ddir: int, name: bytes) -> None:
    """Give the anonymous file fd the name `name` in directory ddir; FileExistsError if
    the name exists (never replaced), other OSError as linkat(2) reports it."""
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=ddir, follow_symlinks=True)


def _probe(dfd: int) -> bool:
    if not _TMPFILE:
        return False
    try:
        fd = os.open(".", _FLAGS, 0o600, dir_fd=dfd)
    except OSError:
        return False
    name = _PROBE % os.urandom(8).hex().encode()
    try:
        link(fd, dfd, name)
    except OSError:
        return False
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dfd)
    return True
