"""Copies staged as files without a name (O_TMPFILE), linked to their name when placed.

A verified copy is written, made durable, read back and compared before it gets
its name (fsops/copy.py). Staged under a temp name, each copy costs a random
name, a directory entry made and later removed, and a sweep after a crash. An
O_TMPFILE file has no name until linkat(2) gives it one: a crash at any point
before the link leaves nothing (the filesystem frees the unlinked inode), and
the link never replaces an existing name (EEXIST), as link() of a temp name.

The link is linkat(fd, "", dir, name, AT_EMPTY_PATH): no path walk (through
/proc/self/fd/N it was 40% of the link's cost, issue #16). The kernel allows it
to a process with CAP_DAC_READ_SEARCH (dedupd runs as root; before Linux 6.10 in
the initial user namespace) and, since 6.10, to one whose credentials are those
that opened the file (not after a fork or a setuid); else it answers ENOENT.
Refused, the link goes through /proc/self/fd/N with AT_SYMLINK_FOLLOW, which
needs no privilege, and the process goes there directly from then on. Where the
filesystem has no O_TMPFILE (FUSE, NFS, vfat, zfs-fuse), no hardlinks, or
neither link can be made (unprivileged, no /proc), `open_in` says so (None) and
the caller stages under a temp name.
Whether a filesystem can is probed once per device and process: an anonymous
file linked to a temp name (the shape remove_stale_temps sweeps) and unlinked.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

from dedupd import handles
from dedupd.fsops.archive_lock import TMP_PREFIX, TMP_SUFFIX

_TMPFILE = getattr(os, "O_TMPFILE", 0)
_FLAGS = _TMPFILE | os.O_RDWR | os.O_CLOEXEC
_PROBE = TMP_PREFIX + b"%s" + TMP_SUFFIX  # swept after a crash (remove_stale_temps)
_able: dict[int, bool] = {}  # st_dev -> anonymous files can be made and linked
_AT_EMPTY_PATH = 0x1000  # linux/fcntl.h
# Our own handle on libc's linkat (LIBC[...] is not the shared attribute), resolved
# once; its argument types make a str name an error instead of a wchar_t string.
_linkat = handles.LIBC["linkat"]
_linkat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                    ctypes.c_int)
_linkat.restype = ctypes.c_int
# AT_EMPTY_PATH's refusals: ENOENT (no privilege), EPERM (seccomp/LSM), EINVAL
# (a kernel without the flag). Any of them may instead be the link's own failure:
# the /proc link tells, and only its success sends this process there for good.
_REFUSED = frozenset((errno.ENOENT, errno.EPERM, errno.EINVAL))
_via_proc = False  # AT_EMPTY_PATH refused in this process: link through /proc


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
    global _via_proc
    if not _via_proc:
        if _linkat(fd, b"", ddir, name, _AT_EMPTY_PATH) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:  # linkat never replaces a name: no second try
            raise FileExistsError(err, os.strerror(err), os.fsdecode(name))
        # Refused, or the link failed: the /proc link decides and reports the error
        # as it always did
        _link_proc(fd, ddir, name)
        if err in _REFUSED:
            _via_proc = True
        return
    _link_proc(fd, ddir, name)


def _link_proc(fd: int, ddir: int, name: bytes) -> None:
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
