"""What a `dedupd backup` run starts first: the questions that wait on other processes.

An rclone target asks `rclone backend features` (~50-100 ms, a process) and the
job asks zfs which send flags it has and whether the dataset is encrypted (five
short processes). None of them needs the index or the rest of the backup code,
so the command starts them before importing that (~0.1 s of imports: the index,
the catalog, the uploader), which then runs on this core while they run on the
other. This module imports only the config, the targets' front and streams.py.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

from dedupd.backup import streams
from dedupd.backup.targets import Target, make_target
from dedupd.config import BackupConfig, Config
from dedupd.errors import UsageError


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
