"""The daemon's footprint outside its loop: runtime dir, lock/pid file, fd limit.

The runtime directory holds the control sockets and (by default) the pid
file, and the daemon is root: a name there that another user could bend
would let that user aim root's chmod/chown/writes at any file. So the
directory is opened without following a symlink (O_NOFOLLOW, relative to its
parent's fd) and refused unless it is a real directory owned by root (or by
the daemon's own uid when it is not root) inside a parent that no other user
may rename entries in (owned by root or us, and not writable by others unless
sticky, as /tmp is). Its mode and group are then set through that fd. The pid
file is opened with O_NOFOLLOW too and refused unless it is a regular file of
ours; it is removed only while that name still is the file we locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import resource
import stat
from pathlib import Path

from dedupd.errors import ConfigError, DedupdError, TemporaryFailure
from dedupd.fsops.single import NotSingle, open_single

log = logging.getLogger("dedupd.runtime")


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def prepare_runtime_dir(d: Path, socket_group: str, source: str = "<config>") -> None:
    """Create or check the socket dir: 0750, owner root, group socket_group when it
    exists (else root only). Raises ConfigError (exit 78) for a runtime dir that
    is a symlink, not a directory, not ours, or in a directory others can change."""
    d = Path(os.path.abspath(d))

    def refuse(problem: str) -> ConfigError:
        return ConfigError(source, "[daemon] runtime_dir", f"{d}: {problem}; refusing to use "
                           "it (remove it, or choose a directory only root can write)")

    d.parent.mkdir(parents=True, exist_ok=True)
    parent = os.open(d.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        pst = os.fstat(parent)
        if pst.st_uid not in (0, os.geteuid()) or \
                (pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX):
            raise refuse(f"its parent {d.parent} may be changed by other users")
        with contextlib.suppress(FileExistsError):
            os.mkdir(d.name, 0o700, dir_fd=parent)
        try:
            fd = os.open(d.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=parent)
        except OSError as e:
            if os.path.islink(d):
                raise refuse("is a symbolic link") from None
            raise refuse(f"cannot be opened as a directory ({e.strerror})") from None
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise refuse(f"is owned by uid {st.st_uid}, not by "
                         f"{'root' if os.geteuid() == 0 else f'uid {os.geteuid()}'}")
        os.fchmod(fd, 0o750)
        gid = group_id(socket_group)
        if os.geteuid() == 0:
            os.fchown(fd, 0, gid if gid is not None else 0)
    finally:
        os.close(fd)


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (at most 65536): every control
    connection holds a descriptor until it is refused or served, and at the
    common default of 1024 a flood of connections would make accept() fail
    (EMFILE) for root too. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            return want
    return soft


class PidLock:
    """One daemon per lock file: an flock held for the daemon's life; the file holds its pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> int:
        """Take the lock or raise TemporaryFailure (exit 75) naming the holder's pid.

        Never follows a symlink and never writes into a file that is not ours
        (DedupdError, exit 1): the pid file may sit in a directory others share.
        O_NONBLOCK: a FIFO planted at the name must not hang the open."""
        try:
            fd = open_single(self.path, os.O_RDWR | os.O_CREAT, 0o644, uid=os.geteuid())
        except NotSingle as e:
            what = "is a symbolic link" if e.symlink else (
                f"not a regular file of uid {os.geteuid()} with one name")
            raise DedupdError(f"pid file {self.path}: {what}; refusing to use it") from None
        except OSError as e:
            raise DedupdError(f"pid file {self.path}: {e.strerror}; refusing to use it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise TemporaryFailure(f"another dedupd (pid {other or '?'}) is running with "
                                   f"{self.path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return fd

    def release(self) -> None:
        if self.fd is not None:
            mine = os.fstat(self.fd)
            with contextlib.suppress(OSError):
                now = os.lstat(self.path)
                if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                    os.unlink(self.path)
            os.close(self.fd)
            self.fd = None
