"""Is a file open for writing by another process? The check right before a
destructive step on it (dedup/hardlink.py, dedup/crossdrive.py): a read lease where
the filesystem has them, else /proc's open files. Changes nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from dedupd.dedup.verify import Refused, open_path


def open_for_write() -> dict[tuple[int, int], int]:
    """(dev, ino) -> pid of every regular file some process holds open for writing.

    Best effort from /proc/*/fd and /proc/*/fdinfo flags: processes we may not
    inspect, and files opened after this call, are not seen. Leases are not
    consulted. Callers take one snapshot per group, right before acting.
    """
    found: dict[tuple[int, int], int] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        base = f"/proc/{pid}"
        try:
            fds = os.listdir(f"{base}/fd")
        except OSError:
            continue
        for fd in fds:
            key = _writable_fd(base, fd)
            if key is not None:
                found[key] = int(pid)
    return found


def lease_writer(path: bytes) -> bool | None:
    """Is path open for writing by any process? None where leases are unsupported.

    A read lease (F_SETLEASE F_RDLCK) is refused with EAGAIN exactly when some
    process holds the file open for writing. It is taken and released at once:
    exact at this instant, and far cheaper than walking /proc.
    """
    try:
        fd = open_path(path)
    except (OSError, Refused):
        return None
    try:
        return lease_writer_fd(fd)
    finally:
        os.close(fd)


def lease_writer_fd(fd: int) -> bool | None:
    """lease_writer on a descriptor opened read-only (by the caller's handle)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return True if e.errno == errno.EAGAIN else None
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


class Writers:
    """The open-for-write check of one group: a lease per file, /proc where needed."""

    def __init__(self) -> None:
        self._proc: dict[tuple[int, int], int] | None = None

    def check(self, key: tuple[int, int], path: bytes) -> None:
        """Raise Refused('open_for_write') naming how it was found."""
        self.check_held(key, lease_writer(path))

    def check_fd(self, key: tuple[int, int], fd: int) -> None:
        """check() on the file's descriptor (opened read-only by the caller)."""
        self.check_held(key, lease_writer_fd(fd))

    def check_held(self, key: tuple[int, int], held: bool | None) -> None:
        if held:
            raise Refused("open_for_write", "read lease refused: another process has it "
                          "open for writing")
        if held is None:  # no leases here (FUSE, NFS): fall back to /proc
            if self._proc is None:
                self._proc = open_for_write()
            pid = self._proc.get(key)
            if pid is not None:
                raise Refused("open_for_write", f"/proc: open for writing by pid {pid}")


def _writable_fd(base: str, fd: str) -> tuple[int, int] | None:
    try:
        with open(f"{base}/fdinfo/{fd}", "rb") as f:
            flags = 0
            for line in f:
                if line.startswith(b"flags:"):
                    flags = int(line.split()[1], 8)
                    break
        if flags & os.O_ACCMODE not in (os.O_WRONLY, os.O_RDWR):
            return None
        st = os.stat(f"{base}/fd/{fd}")
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino)
