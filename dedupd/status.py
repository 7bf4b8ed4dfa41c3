"""What the daemon is doing: counters, per-worker state, rates, errors, schedule.

Owned by the event loop: only the loop thread mutates a StatusBoard (after a
step has returned from its worker thread), so a status query never races a
step and never takes a lock. Every field is documented in docs/status.md.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from dedupd import __version__

STATES = ("idle", "scanning", "hashing", "deduping")
MAX_ERRORS = 20
RATE_WINDOW = 60.0  # seconds of samples behind files/s and bytes/s
# Counters that measure files walked and bytes read: the rate meter's inputs.
FILE_COUNTERS = ("files_new", "files_changed", "files_unchanged")
BYTE_COUNTERS = ("bytes_read",)


def add_counters(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + int(v)


class RateMeter:
    """files/s and bytes/s over the last RATE_WINDOW seconds of samples."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int, int]] = deque()

    def sample(self, now: float, files: int, nbytes: int) -> None:
        self.samples.append((now, files, nbytes))
        while len(self.samples) > 2 and now - self.samples[1][0] > RATE_WINDOW:
            self.samples.popleft()

    def rates(self, now: float) -> tuple[float, float]:
        if len(self.samples) < 2 or now - self.samples[-1][0] > RATE_WINDOW:
            return 0.0, 0.0
        t0, f0, b0 = self.samples[0]
        t1, f1, b1 = self.samples[-1]
        dt = max(t1 - t0, 1e-3)
        return (f1 - f0) / dt, (b1 - b0) / dt


@dataclass
class WorkerStatus:
    """One volume worker. `state` is one of STATES; `doing` says what, in words."""

    name: str
    kind: str
    path: str
    mode: str
    state: str = "idle"
    doing: str = "waiting for the first pass"
    paused: bool = False
    rescan_requested: bool = False
    passes_started: int = 0
    passes_completed: int = 0
    passes_failed: int = 0
    steps: int = 0
    pass_started_at: float | None = None
    last_pass_finished_at: float | None = None
    last_pass_seconds: float | None = None
    next_pass_at: float | None = None
    bytes_reclaimed: int = 0
    done_counters: dict[str, int] = field(default_factory=dict)  # finished passes
    pass_counters: dict[str, int] = field(default_factory=dict)  # the pass under way
    rate: RateMeter = field(default_factory=RateMeter)

    def counters(self) -> dict[str, int]:
        total = dict(self.done_counters)
        add_counters(total, self.pass_counters)
        return total

    def record_step(self, state: str, detail: str, counters: dict[str, int]) -> None:
        self.state = state if state in STATES else "idle"
        self.doing = detail
        self.steps += 1
        self.pass_counters = dict(counters)
        total = self.counters()
        self.rate.sample(time.monotonic(), sum(total.get(k, 0) for k in FILE_COUNTERS),
                         sum(total.get(k, 0) for k in BYTE_COUNTERS))

    def start_pass(self) -> None:
        self.passes_started += 1
        self.pass_started_at = time.time()
        self.pass_counters = {}
        self.next_pass_at = None
        self.rescan_requested = False

    def finish_pass(self, counters: dict[str, int], reclaimed: int, ok: bool) -> None:
        add_counters(self.done_counters, counters)
        self.pass_counters = {}
        self.bytes_reclaimed += reclaimed
        now = time.time()
        if self.pass_started_at is not None:
            self.last_pass_seconds = round(now - self.pass_started_at, 3)
        self.last_pass_finished_at = now
        self.pass_started_at = None
        self.state = "idle"
        self.rate = RateMeter()  # an idle volume reports 0/s, not its last pass's speed
        if ok:
            self.passes_completed += 1
        else:
            self.passes_failed += 1

    def as_json(self, runnable: bool) -> dict[str, Any]:
        files_s, bytes_s = self.rate.rates(time.monotonic())
        return {
            "name": self.name, "kind": self.kind, "path": self.path, "mode": self.mode,
            "state": self.state, "doing": self.doing, "paused": self.paused,
            "queue": {"runnable": runnable, "rescan_requested": self.rescan_requested},
            "passes": {"started": self.passes_started, "completed": self.passes_completed,
                       "failed": self.passes_failed},
            "steps": self.steps,
            "pass_started_at": self.pass_started_at,
            "last_pass_finished_at": self.last_pass_finished_at,
            "last_pass_seconds": self.last_pass_seconds,
            "next_pass_at": self.next_pass_at,
            "rates": {"files_per_s": round(files_s, 1), "bytes_per_s": round(bytes_s, 1)},
            "bytes_reclaimed": self.bytes_reclaimed,
            "counters": self.counters(),
        }


@dataclass
class JobStatus:
    """One scheduled backup job."""

    name: str
    schedule: str
    state: str = "idle"  # idle | running
    next_run_at: float | None = None
    last_run_at: float | None = None
    last_result: str = ""
    runs: int = 0
    failures: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule, "state": self.state,
                "next_run_at": self.next_run_at, "last_run_at": self.last_run_at,
                "last_result": self.last_result, "runs": self.runs, "failures": self.failures}


class StatusBoard:
    """Everything `{"cmd": "status"}` reports. Mutated by the event loop thread only."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.state = "starting"  # starting | running | reloading | stopping
        self.workers: dict[str, WorkerStatus] = {}
        self.jobs: dict[str, JobStatus] = {}
        self.errors: deque[dict[str, Any]] = deque(maxlen=MAX_ERRORS)
        self.reloads = 0
        self.runnable: set[str] = set()  # workers waiting for their turn (the loop's queue)

    def error(self, where: str, message: str, path: str = "") -> None:
        self.errors.append({"time": round(time.time(), 3), "where": where, "path": path,
                            "error": message})

    def uptime(self) -> float:
        return time.monotonic() - self.started_mono

    def totals(self) -> tuple[dict[str, int], int]:
        total: dict[str, int] = {}
        reclaimed = 0
        for w in self.workers.values():
            add_counters(total, w.counters())
            reclaimed += w.bytes_reclaimed
        return total, reclaimed

    def next_events(self) -> list[dict[str, Any]]:
        ev: list[dict[str, Any]] = [
            {"at": w.next_pass_at, "what": f"pass of volume {w.name}"}
            for w in self.workers.values() if w.next_pass_at is not None and not w.paused]
        ev += [{"at": j.next_run_at, "what": f"backup job {j.name}"}
               for j in self.jobs.values() if j.next_run_at is not None]
        return sorted(ev, key=lambda e: float(e["at"]))

    def snapshot(self, volume: str | None = None) -> dict[str, Any]:
        """The status document; with volume, only that volume's worker."""
        workers = [w for n, w in self.workers.items() if volume is None or n == volume]
        total, reclaimed = self.totals()
        return {
            "pid": self.pid, "version": __version__, "state": self.state,
            "started_at": round(self.started_wall, 3), "uptime": round(self.uptime(), 3),
            "reloads": self.reloads,
            "volumes": {w.name: w.as_json(w.name in self.runnable) for w in workers},
            "queue": {"runnable": len(self.runnable)},
            "backups": {j.name: j.as_json() for j in self.jobs.values()},
            "counters": total, "bytes_reclaimed": reclaimed,
            "last_errors": list(self.errors),
            "next_events": self.next_events(),
        }

    def stats(self, volume: str | None = None) -> dict[str, Any]:
        """Counters only: cheaper than status, for graphs."""
        total, reclaimed = self.totals()
        return {
            "uptime": round(self.uptime(), 3), "counters": total, "bytes_reclaimed": reclaimed,
            "volumes": {n: {"counters": w.counters(), "bytes_reclaimed": w.bytes_reclaimed,
                            "passes_completed": w.passes_completed}
                        for n, w in self.workers.items() if volume is None or n == volume},
        }

    def summary(self) -> str:
        """One line for systemd's STATUS= (shown by `systemctl status`)."""
        from dedupd.output import human_bytes

        parts = []
        for w in self.workers.values():
            what = "paused" if w.paused else w.state
            parts.append(f"{w.name} {what}")
        _, reclaimed = self.totals()
        vols = ", ".join(parts) or "no volumes"
        return f"{self.state}: {vols}; {human_bytes(reclaimed)} reclaimed"
