"""The daemon's footprint outside its loop: runtime dir, lock/pid file, recovery hook."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dedupd.config import VolumeConfig
from dedupd.errors import TemporaryFailure

log = logging.getLogger("dedupd.runtime")


def group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def prepare_runtime_dir(d: Path, socket_group: str) -> None:
    """Socket dir 0750, group = socket_group when it exists (else root only)."""
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o750)
    gid = group_id(socket_group)
    if os.geteuid() == 0:
        os.chown(d, 0, gid if gid is not None else 0)


class PidLock:
    """One daemon per lock file: an flock held for the daemon's life; the file holds its pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> int:
        """Take the lock or raise TemporaryFailure (exit 75) naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)
            self.fd = None


def has_journal() -> bool:
    """True when this build has the operations journal (dedupd.dedup.journal)."""
    return importlib.util.find_spec("dedupd.dedup") is not None and \
        importlib.util.find_spec("dedupd.dedup.journal") is not None


def recover_journal(store: Any, dry_run: bool,
                    volumes: Mapping[str, VolumeConfig]) -> list[Any]:
    """Resolve every volume's unfinished journal ops (blocking: run it in a thread).

    Uses `dedupd.dedup.journal.recover_all(store)` when the journal module
    offers it; otherwise, like `dedupd recover`, resolves one volume at a time
    with `dedupd.dedup.recovery.recover_all`, holding the volume's lock so that
    a pass running elsewhere (`dedupd run --once`) is never taken for an
    interrupted one. A volume whose lock is busy is left to its next pass,
    which recovers it first.
    """
    journal = importlib.import_module("dedupd.dedup.journal")
    if hasattr(journal, "recover_all"):
        return list(journal.recover_all(store))
    recovery = importlib.import_module("dedupd.dedup.recovery")
    jr = journal.Journal(store)
    out: list[Any] = []
    try:
        for name in sorted({r.spec.volume for r in jr.unfinished(None)}):
            try:
                with _volume_lock(volumes.get(name)):
                    out += [r.as_json() if hasattr(r, "as_json") else r
                            for r in recovery.recover_all(jr, name, dry_run=dry_run)]
            except TemporaryFailure as e:
                log.warning("volume %s: not recovered now: %s", name, e)
    finally:
        jr.close()
    return out


def _volume_lock(v: VolumeConfig | None) -> contextlib.AbstractContextManager[Any]:
    if v is None or importlib.util.find_spec("dedupd.dedup.lock") is None:
        return contextlib.nullcontext()
    lock = importlib.import_module("dedupd.dedup.lock")
    cm: contextlib.AbstractContextManager[Any] = lock.volume_lock(
        lock.lock_root(v.kind, v.path, v.branches))
    return cm
