"""ZFS backups to object storage (S3, rclone remotes).

The daemon's scheduler calls `run_job(cfg, job, store, dry_run, full)` from a
worker thread; the CLI commands live in dedupd/commands/backup.py.

The names below are imported from jobs.py when first asked for: importing a
module of this package (start.py, the targets) does not pull in jobs.py and
everything it needs (the index among them), which `dedupd backup` imports
only once its first processes are running (start.py).
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dedupd.backup.jobs import BackupResult, Hooks, run_job

__all__ = ["BackupResult", "Hooks", "run_job"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dedupd.backup import jobs

        return getattr(jobs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
