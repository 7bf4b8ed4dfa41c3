"""The archive's lock, and the temp files an interrupted copy may leave in it.

A consolidation holds the archive's lock file (flock) for its whole run and
marks it RUNNING while it works: a run that finds the mark knows the previous
one was interrupted and sweeps the temp names its copies may have left
(remove_stale_temps; a copy staged with no name, fsops/anon.py, leaves none).
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from dedupd import handles
from dedupd.errors import DedupdError, TemporaryFailure
from dedupd.fsops.single import NotSingle, open_single
from dedupd.fsops.whole import replace_at

TMP_PREFIX = b".dedupd-copy."
TMP_SUFFIX = b".tmp"
TMP_GLOB = ".dedupd-copy.*.tmp"


def is_temp_name(name: bytes) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def is_lock_temp(name: bytes) -> bool:
    """The temp name lock_archive's replacement of a shared lock file fills before
    renaming it over LOCK_NAME (fsops/whole.replace_at): left by a crash between."""
    return name.startswith(_LOCK_TEMP_PREFIX) and name.endswith(b".partial")


def remove_stale_temps(root: bytes, dry_run: bool = False) -> list[bytes]:
    """Delete the temp files an interrupted copy left under root; return their paths.

    Only names of the exact `.dedupd-copy.<hex>.tmp` shape are touched, and in
    root a lock file's `..dedupd-consolidate.lock.<hex>.partial`. The caller holds
    the archive lock, so no live copy owns one of them, and no run is replacing
    the lock file (that takes the lock of the file at its name: this one's).
    """
    found: list[bytes] = []
    # fwalk descends by fd without following symlinks: removal acts on the very
    # directory that was listed.
    for dirpath, _dirs, files, dfd in os.fwalk(root):
        for name in files:
            if is_temp_name(name) or (dirpath == root and is_lock_temp(name)):
                found.append(os.path.join(dirpath, name))
                if not dry_run:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dfd)
    return found


LOCK_NAME = b".dedupd-consolidate.lock"
_LOCK_TEMP_PREFIX = b"." + LOCK_NAME + b"."
LOCK_TEMP_GLOB = os.fsdecode(_LOCK_TEMP_PREFIX) + "*.partial"


class Locked(Exception):
    """Another dedupd process is importing into the same archive."""


def lock_archive(root: bytes) -> int:
    """Take the archive's exclusive lock (non-blocking); return the fd to close later.

    The lock file stays in the archive root (excluded from scans). While a run
    works it holds RUNNING: finding that word when taking the lock means the
    previous run was interrupted and may have left temp files (`was_interrupted`).
    Anything but a regular file at the name (a FIFO, symlink or directory put there
    by someone) is a DedupdError, never opened through nor written. A regular file
    with other names (an archive copied with `cp -al`, rsnapshot style, or a link
    planted to a file elsewhere) is never written either: under its lock, its name
    here is replaced by a new lock file, marked RUNNING so that this run sweeps
    (the other names keep the file as it was)."""
    path = os.path.join(root, LOCK_NAME)
    with handles.Parent(path) as p:
        for _ in range(_TRIES):
            try:
                fd = open_single(p.name, os.O_RDWR | os.O_CREAT, 0o600, dir_fd=p.fd,
                                 linked=True)
            except NotSingle:
                raise DedupdError(f"{os.fsdecode(path)}: not a regular file: the archive's "
                                  "lock is kept there (remove it, then run again)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise Locked(os.fsdecode(root)) from None
            st, now = os.fstat(fd), p.lstat()
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                if st.st_nlink == 1:
                    return fd
                # the name is this file's, and the lock keeps another run from
                # replacing it meanwhile: a run holds a lock only once it found the
                # file it locked at the name, with no other name
                replace_at(p.fd, p.name, RUNNING, 0o600)
            os.close(fd)  # replaced (here or by another run): lock what is there now
    raise TemporaryFailure(f"{os.fsdecode(path)}: replaced again and again while being "
                           "locked; try again later")


# rounds of lock_archive: a shared file replaced, then the new one locked; one more
# when another run's replacement came between this one's open and its lock
_TRIES = 4


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
