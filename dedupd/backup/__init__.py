"""ZFS backups to object storage (S3, rclone remotes).

The daemon's scheduler calls `run_job(cfg, job, store, dry_run, full)` from a
worker thread; the CLI commands live in dedupd/commands/backup.py.
"""

from dedupd.backup.jobs import BackupResult, Hooks, run_job

__all__ = ["BackupResult", "Hooks", "run_job"]
