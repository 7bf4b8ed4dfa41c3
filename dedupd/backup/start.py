"""What a `dedupd backup` run starts first: the work that waits on other processes.

An rclone target asks `rclone backend features` (~50-100 ms, a process), the
job asks zfs which send flags it has and whether the dataset is encrypted (five
short processes), and a run takes its new snapshot (two: `zfs snapshot`, then
`zfs get` of its GUID). None of them needs the index or the rest of the backup
code, so the command starts them before importing that (~0.1 s of imports: the
index, the catalog, the uploader), which then runs on this core while they run
on the other. This module imports only the config, the targets' front,
streams.py and snapshots.py.

The snapshot taken ahead (Ahead) is taken under the job lock, like any run's,
before the run has read the index: a run that then finds an unfinished attempt
to resume destroys it (it is this job's, never uploaded). A kill -9 before the
run records it leaves a snapshot of the job that no backup names, which the
local retention destroys in a later run, as one left by a kill right after
`zfs snapshot` always was.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

from dedupd.backup import snapshots, streams
from dedupd.backup.snapshots import Snapshot
from dedupd.backup.targets import Target, make_target
from dedupd.config import BackupConfig, Config
from dedupd.errors import DedupdError, TemporaryFailure, UsageError

log = logging.getLogger("dedupd.backup")


@dataclass(frozen=True)
class Started:
    job: BackupConfig
    target: Target  # its remote's features are being asked (rclone)
    probe: Future[streams.Wanted]  # the zfs probes, running


def resolve(cfg: Config, job: str | BackupConfig) -> BackupConfig:
    if isinstance(job, BackupConfig):
        return job
    if job not in cfg.backups:
        known = ", ".join(cfg.backups) or "none configured"
        raise UsageError(f"no backup job {job!r} in {cfg.source} ({known})")
    return cfg.backups[job]


def start(cfg: Config, job: str) -> Started:
    """Resolve the job (UsageError when unknown), make its target and start the zfs
    probes; nothing is changed anywhere (the job lock is taken later, by run_job)."""
    jc = resolve(cfg, job)
    target = make_target(jc.target)
    return Started(jc, target, streams.wanted_soon(jc.dataset, jc.raw))


@contextmanager
def job_lock(cfg: Config, job: str) -> Iterator[None]:
    """One run per job at a time (CLI and daemon alike); a second one exits 75. The
    runtime dir gets the daemon's checks first (a `dedupd backup` may come before any
    daemon): one another user can change is a ConfigError, never used to create the
    lock through a name planted there."""
    from dedupd.runtime import prepare_runtime_dir

    d = cfg.daemon.runtime_dir
    prepare_runtime_dir(d, cfg.daemon.socket_group, cfg.source)
    fd = os.open(d / f"backup-{job}.lock",
                 os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TemporaryFailure(f"backup job {job} is already running") from None
        yield
    finally:
        os.close(fd)


class Ahead:
    """The run's new snapshot, taken in a thread from construction on (call it with
    the job lock held). take() hands it to the run, which owns it from then on;
    close() destroys it unless it was taken (idempotent; the caller calls it when
    the run ends, however it ends)."""

    def __init__(self, jc: BackupConfig) -> None:
        self._jc = jc
        self._done: Future[Snapshot] = Future()
        self._taken = self._closed = False
        threading.Thread(target=self._take_snapshot, name="dedupd-snapshot",
                         daemon=True).start()

    def _take_snapshot(self) -> None:
        try:
            self._done.set_result(snapshots.create(self._jc.dataset, self._jc.snapshot_prefix,
                                                   self._jc.name))
        except BaseException as e:  # raised by take(), in the run's thread
            self._done.set_exception(e)

    def take(self) -> Snapshot:
        self._taken = True
        return self._done.result()

    def close(self) -> None:
        if self._taken or self._closed:
            return
        self._closed = True
        try:
            snap = self._done.result()
        except BaseException:  # never taken: nothing to destroy
            return
        try:
            snapshots.destroy(snap, self._jc.name, self._jc.snapshot_prefix)
        except DedupdError as e:
            log.warning("%s: could not destroy %s, taken for a run that did not use it "
                        "(retention will): %s", self._jc.name, snap.name, e)


@contextmanager
def locked_ahead(cfg: Config, jc: BackupConfig) -> Iterator[Ahead]:
    """The job lock and, under it, the new snapshot taken ahead; on the way out the
    snapshot is destroyed unless the run took it, then the lock is released."""
    with job_lock(cfg, jc.name):
        ahead = Ahead(jc)
        try:
            yield ahead
        finally:
            ahead.close()
