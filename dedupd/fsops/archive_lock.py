"""The archive's lock, and the temp files an interrupted copy may leave in it.

A consolidation holds the archive's lock file (flock) for its whole run and
marks it RUNNING while it works: a run that finds the mark knows the previous
one was interrupted and sweeps the temp names its copies may have left
(remove_stale_temps; a copy staged with no name, fsops/anon.py, leaves none).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

from dedupd import handles
from dedupd.errors import DedupdError

TMP_PREFIX = b".dedupd-copy."
TMP_SUFFIX = b".tmp"
TMP_GLOB = ".dedupd-copy.*.tmp"


def is_temp_name(name: bytes) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def remove_stale_temps(root: bytes, dry_run: bool = False) -> list[bytes]:
    """Delete the temp files an interrupted copy left under root; return their paths.

    Only names of the exact `.dedupd-copy.<hex>.tmp` shape are touched. The
    caller holds the archive lock, so no live copy owns one of them.
    """
    found: list[bytes] = []
    # fwalk descends by fd without following symlinks: removal acts on the very
    # directory that was listed.
    for dirpath, _dirs, files, dfd in os.fwalk(root):
        for name in files:
            if is_temp_name(name):
                found.append(os.path.join(dirpath, name))
                if not dry_run:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dfd)
    return found


LOCK_NAME = b".dedupd-consolidate.lock"


class Locked(Exception):
    """Another dedupd process is importing into the same archive."""


def lock_archive(root: bytes) -> int:
    """Take the archive's exclusive lock (non-blocking); return the fd to close later.

    The lock file stays in the archive root (excluded from scans). While a run
    works it holds RUNNING: finding that word when taking the lock means the
    previous run was interrupted and may have left temp files (`was_interrupted`).
    Anything but a regular file with one name at the name (a FIFO, symlink,
    directory or another name of some file, put there by someone) is a DedupdError,
    never opened through nor written.
    """
    path = os.path.join(root, LOCK_NAME)
    try:
        with handles.Parent(path) as p:
            # O_NONBLOCK: a FIFO planted at the name must not hang the open
            fd = p.open(os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise
        fd = -1
    # one name only: a hardlink planted there to a file elsewhere (where
    # fs.protected_hardlinks is 0) would be truncated and written by mark_running
    st = os.fstat(fd) if fd >= 0 else None
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        if fd >= 0:
            os.close(fd)
        raise DedupdError(f"{os.fsdecode(path)}: not a regular file with one name: the "
                          "archive's lock is kept there (remove it, then run again)")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Locked(os.fsdecode(root)) from None
    return fd


RUNNING = b"running\n"


def was_interrupted(root: bytes) -> bool:
    """True when the last run into this archive did not finish (or never ran here)."""
    try:
        with open(handles.open_at(os.path.join(root, LOCK_NAME)), "rb") as f:
            return f.read(len(RUNNING)) == RUNNING
    except FileNotFoundError:
        return True  # first run, or the marker was removed: sweep to be sure
    except OSError:
        return True


def mark_running(fd: int, running: bool) -> None:
    """Set (durably) or clear the RUNNING marker in the held lock file."""
    os.ftruncate(fd, 0)
    if running:
        os.pwrite(fd, RUNNING, 0)
    os.fsync(fd)
