"""Volume workers and the round-robin that serves them.

A VolumeWorker stands for one volume's passes (generators of bounded steps,
see dedupd.volumes), which live in the step process (dedupd/stepper.py; its
protocol: dedupd/steppipe.py).
`step()` and `close()` block on that process and run in the daemon's single
step thread; everything else runs on the event loop. The loop hands out one
step at a time, so the StatusBoard entry is only updated between steps.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dedupd.config import VolumeConfig
from dedupd.status import WorkerStatus
from dedupd.steppipe import StepChannel, StepOutcome, close_request, step_request
from dedupd.volumes import PassReport

log = logging.getLogger("dedupd.worker")

MAX_ERROR_BACKOFF = 3600.0


class VolumeWorker:
    """One volume: runs passes, one step per turn; idle between passes."""

    def __init__(self, vol: VolumeConfig, status: WorkerStatus, dry_run: bool,
                 force_rescan: bool, pass_interval: float) -> None:
        self.vol = vol
        self.st = status
        self.dry_run = dry_run
        self.force_next = force_rescan
        self.pass_interval = pass_interval
        self.pending_vol: VolumeConfig | None = None  # from a reload, used at the next pass
        self.active = False  # a pass is under way in the step process
        self.due = time.time()  # the first pass starts right away
        self.failures = 0
        self.removed = False

    @property
    def in_pass(self) -> bool:
        return self.active

    def runnable(self, now: float) -> bool:
        if self.st.paused or self.removed:
            return False
        return self.in_pass or self.st.rescan_requested or now >= self.due

    def step(self, stepper: StepChannel) -> StepOutcome:
        """One bounded unit of work (blocking; step thread only). Exceptions propagate."""
        self.active = True
        out: StepOutcome = stepper.call(*step_request(self.vol, self.dry_run, self.force_next))
        return out

    def close(self, stepper: StepChannel) -> None:
        """Abandon the pass between steps (step thread only): runs its cleanup code."""
        if self.active:
            self.active = False
            stepper.call(*close_request(self.vol.name))

    # -- loop side ---------------------------------------------------------------

    def begin(self) -> None:
        """Called on the loop before the first step of a pass."""
        if self.pending_vol is not None:
            self.vol, self.pending_vol = self.pending_vol, None
            self.st.kind, self.st.path, self.st.mode = (self.vol.kind, str(self.vol.path),
                                                        self.vol.mode)
        self.st.start_pass()
        log.info("volume %s: pass %d started (%s at %s%s)", self.vol.name,
                 self.st.passes_started, self.vol.kind, self.vol.path,
                 ", full rescan" if self.force_next else "",
                 extra=_fields(self, "pass_started", full_rescan=self.force_next))

    def advanced(self, out: StepOutcome) -> None:
        """Record a step's outcome; log the end of the scan phase once per pass."""
        assert out.step is not None and out.counters is not None
        before = self.st.state
        self.st.record_step(out.step.state, out.step.detail, out.counters)
        if before == "scanning" and self.st.state != "scanning":
            self._log_scan_done(out.counters)

    def finished(self, report: PassReport, actions: int) -> list[dict[str, str]]:
        """The pass ended normally; returns its problems for the error list."""
        if self.st.state == "scanning":
            self._log_scan_done(report.counters)
        self.active = False
        self.force_next = False
        self.failures = 0
        self.st.finish_pass(report.counters, report.bytes_reclaimed, ok=True)
        self.due = time.time() + self.pass_interval
        self.st.next_pass_at = round(self.due, 3)
        self.st.doing = f"waiting; last pass {self.st.last_pass_seconds}s"
        c = report.counters
        log.info("volume %s: pass %d finished in %.1fs: %d files seen, %d hashed, %d groups, "
                 "%d actions%s, %d bytes reclaimed, %d problems", self.vol.name,
                 self.st.passes_started, report.seconds, c.get("files_seen", 0),
                 c.get("files_hashed", 0), c.get("groups", 0), actions,
                 " (dry run)" if report.dry_run else "", report.bytes_reclaimed,
                 len(report.problems),
                 extra=_fields(self, "pass_finished", seconds=round(report.seconds, 3),
                               actions=actions, dry_run=report.dry_run,
                               bytes_reclaimed=report.bytes_reclaimed,
                               problems=len(report.problems), counters=c))
        return list(report.problems)

    def failed(self, err: BaseException) -> None:
        """The pass raised: drop it and retry later with exponential backoff."""
        self.active = False
        self.failures += 1
        self.st.finish_pass({}, 0, ok=False)
        backoff = min(60.0 * 2 ** (self.failures - 1), MAX_ERROR_BACKOFF, self.pass_interval)
        self.due = time.time() + backoff
        self.st.next_pass_at = round(self.due, 3)
        self.st.doing = f"pass failed: {err}; retry in {backoff:.0f}s"
        log.error("volume %s: pass %d failed: %s (retry in %.0fs)", self.vol.name,
                  self.st.passes_started, err, backoff,
                  extra=_fields(self, "pass_failed", error=str(err), retry_in=backoff))

    def _log_scan_done(self, c: dict[str, Any]) -> None:
        log.info("volume %s: scan finished: %d new, %d changed, %d unchanged files",
                 self.vol.name, c.get("files_new", 0), c.get("files_changed", 0),
                 c.get("files_unchanged", 0),
                 extra=_fields(self, "scan_finished", **{k: c.get(k, 0) for k in (
                     "files_new", "files_changed", "files_unchanged")}))


def _fields(w: VolumeWorker, event: str, **more: Any) -> dict[str, Any]:
    """Structured fields for --log-json (dedupd.log puts record.fields in the object)."""
    return {"fields": {"event": event, "volume": w.vol.name, "pass": w.st.passes_started,
                       **more}}


class RoundRobin:
    """Picks the next runnable worker after the last one served: one step per turn."""

    def __init__(self) -> None:
        self.workers: dict[str, VolumeWorker] = {}
        self.cursor = 0

    def add(self, w: VolumeWorker) -> None:
        self.workers[w.vol.name] = w

    def remove(self, name: str) -> None:
        self.workers.pop(name, None)

    def next(self, now: float) -> VolumeWorker | None:
        order = list(self.workers.values())
        for i in range(len(order)):
            idx = (self.cursor + i) % len(order)
            if order[idx].runnable(now):
                self.cursor = idx + 1
                return order[idx]
        return None

    def runnable_names(self, now: float) -> set[str]:
        return {n for n, w in self.workers.items() if w.runnable(now)}

    def sleep_for(self, now: float, cap: float = 60.0) -> float:
        """How long nothing is due (paused workers wait for resume, which wakes the loop)."""
        dues = [w.due for w in self.workers.values() if not w.st.paused and not w.removed]
        return max(0.0, min([cap] + [d - now for d in dues]))
