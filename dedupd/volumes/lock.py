"""One dedupd per volume: an exclusive flock(2) on a file named after the volume path.

The lock belongs to the open file description (so two workers of one process
conflict too) and goes away when the process dies (even by
kill -9), so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
from pathlib import Path
from types import TracebackType

from dedupd.errors import TemporaryFailure

DEFAULT_LOCK_DIR = Path("/run/dedupd/locks")


def lock_dir() -> Path:
    return Path(os.environ.get("DEDUPD_LOCK_DIR") or DEFAULT_LOCK_DIR)


def lock_path(volume_path: Path | str, where: Path | None = None) -> Path:
    """The lock file for a volume: the same real path always maps to the same file."""
    real = os.path.realpath(volume_path)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", real.strip("/"))[-60:] or "root"
    digest = hashlib.blake2b(os.fsencode(real), digest_size=6).hexdigest()
    return (where or lock_dir()) / f"{tag}.{digest}.lock"


class VolumeLock:
    """Context manager: holds the volume's lock or raises TemporaryFailure (exit 75)."""

    def __init__(self, volume_path: Path | str, where: Path | None = None) -> None:
        self.volume_path = str(volume_path)
        self.path = lock_path(volume_path, where)
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise TemporaryFailure(
                    f"volume {self.volume_path} is being processed by another dedupd"
                    f"{f' (pid {holder})' if holder else ''}; lock file {self.path}. "
                    "Try again when it has finished.") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock; the file stays for the next run
            self.fd = None

    def __enter__(self) -> VolumeLock:
        self.acquire()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""
