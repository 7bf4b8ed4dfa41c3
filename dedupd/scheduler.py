"""Backup job scheduling inside the daemon's loop.

A schedule is "daily HH:MM" (local time), "hourly", or "every N<unit>" with
unit s, m, h or d ("every 6h"). Interval schedules count from daemon start,
so a restart loop cannot fire a backup on every start.

The job body belongs to the backup package
(`dedupd.backup.run_job(cfg, job, store, dry_run=...)`). A job runs in its
own thread (it may take hours), never on the loop and never in the volume
workers' step thread, so dedupe keeps its round-robin turns meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from dedupd.backup import run_job
from dedupd.config import BackupConfig, Config
from dedupd.index.store import Store
from dedupd.schedule import Schedule, parse_schedule
from dedupd.status import JobStatus, StatusBoard

log = logging.getLogger("dedupd.scheduler")

__all__ = ["BackupScheduler", "Schedule", "parse_schedule"]


class BackupScheduler:
    """One asyncio task per job: sleep until due, run the job in a thread, repeat."""

    def __init__(self, board: StatusBoard, store: Store, dry_run: bool,
                 config: Callable[[], Config],
                 job_body: Callable[..., Any] = run_job) -> None:
        self.board, self.store, self.dry_run = board, store, dry_run
        self.config = config  # the current config (it changes on reload)
        # run_job(cfg, job, store, dry_run=...), blocking: it runs in a thread
        self.job_body = job_body
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.jobs: dict[str, BackupConfig] = {}
        self.running: set[asyncio.Future[Any]] = set()

    def validate(self, jobs: Mapping[str, BackupConfig],
                 source: str | None = None) -> dict[str, Schedule]:
        src = source or self.config().source
        return {n: parse_schedule(j.schedule, f"backups.{n}.schedule", src)
                for n, j in jobs.items()}

    def update(self, jobs: Mapping[str, BackupConfig]) -> None:
        """Start, restart (changed) or drop job tasks to match jobs. Validates first."""
        schedules = self.validate(jobs)
        for name in list(self.tasks):
            if name not in jobs or jobs[name] != self.jobs.get(name):
                self.tasks.pop(name).cancel()
                self.board.jobs.pop(name, None)
        self.jobs = dict(jobs)
        for name, job in jobs.items():
            if name not in self.tasks:
                self.board.jobs[name] = JobStatus(name, job.schedule)
                due = schedules[name].next_after(time.time())
                self.board.jobs[name].next_run_at = round(due, 3)
                self.tasks[name] = asyncio.create_task(self._loop(job, schedules[name], due),
                                                       name=f"backup-{name}")

    async def _loop(self, job: BackupConfig, sched: Schedule, due: float) -> None:
        st = self.board.jobs[job.name]
        while True:
            st.next_run_at = round(due, 3)
            await asyncio.sleep(max(0.0, due - time.time()))
            await self._run(job, st)
            due = sched.next_after(max(time.time(), due))

    async def _run(self, job: BackupConfig, st: JobStatus) -> None:
        st.last_run_at = round(time.time(), 3)
        st.state = "running"
        log.info("backup job %s started (%s)", job.name, job.dataset)
        fut = asyncio.ensure_future(asyncio.to_thread(self.job_body, self.config(), job,
                                                      self.store, dry_run=self.dry_run))
        self.running.add(fut)
        # Discard on completion, not in `finally`: a cancelled _loop must leave a
        # still-running job visible to stop(), which waits for it.
        fut.add_done_callback(self.running.discard)
        try:
            result = await asyncio.shield(fut)
            st.runs += 1
            st.last_result = "ok" if result is None else str(result)[:200]
            log.info("backup job %s finished: %s", job.name, st.last_result)
        except Exception as e:
            st.failures += 1
            st.last_result = f"failed: {e}"
            self.board.error(f"backup {job.name}", str(e))
            log.error("backup job %s failed: %s", job.name, e)
        finally:
            st.state = "idle"

    async def stop(self, timeout: float) -> bool:
        """Stop scheduling; wait up to timeout for running jobs. True if none is left."""
        for t in self.tasks.values():
            t.cancel()
        for t in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.tasks.clear()
        if not self.running:
            return True
        done, pending = await asyncio.wait(self.running, timeout=timeout)
        return not pending
