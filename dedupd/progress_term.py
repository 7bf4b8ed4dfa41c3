"""The terminal display behind dedupd.progress (imported only when one is drawn).

One line per phase (rich's Progress, transient, on stderr): the phase, a bar,
files (or chunks) and bytes done/total, the phase's average rate and the ETA
at that rate. Counts live in the rich task's fields; the bar follows bytes when
their total is known, else files.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

from dedupd.output import human_bytes

REFRESH_PER_SECOND = 4


class TerminalProgress:
    """The rich display: one line per phase, the current one moving. Thread-safe."""

    def __init__(self, unit: str = "files") -> None:
        self.unit = unit
        self.console = Console(file=sys.stderr, force_terminal=True)
        self.rich = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
            _CountsColumn(), _RateColumn(), _EtaColumn(),
            console=self.console, transient=True, refresh_per_second=REFRESH_PER_SECOND,
            redirect_stdout=False)
        self.lock = threading.Lock()
        self.tasks: dict[str, TaskID] = {}  # phase name -> its line
        self.state: dict[TaskID, dict[str, Any]] = {}  # the counts, also the task's fields
        self.current: TaskID | None = None

    def __enter__(self) -> TerminalProgress:
        self.rich.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.rich.stop()

    def phase(self, name: str, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        with self.lock:
            self._phase(name)
            self._update(files_total=files_total, bytes_total=bytes_total)

    def _phase(self, name: str) -> None:
        task = self.tasks.get(name)
        if task is None:
            if self.current is not None:  # a new phase: the one before is over
                self._end(self.current)
            fields: dict[str, Any] = {
                "files": 0, "nbytes": 0, "files_total": None, "bytes_total": None,
                "unit": self.unit, "note": "", "t0": time.monotonic(), "t_end": None}
            task = self.tasks[name] = self.rich.add_task(name, total=None, **fields)
            self.state[task] = fields
        self.current = task
        self.state[task]["t_end"] = None

    def _end(self, task: TaskID) -> None:
        """The phase is over: its clock stops, its bar is full."""
        f = self.state[task]
        f["t_end"] = time.monotonic()
        done = f["nbytes"] if f["bytes_total"] else f["files"]
        self.rich.update(task, total=max(done, 1), completed=max(done, 1), **f)

    def update(self, files: int | None = None, nbytes: int | None = None, *,
               files_total: int | None = None, bytes_total: int | None = None,
               note: str | None = None) -> None:
        with self.lock:
            self._update(files, nbytes, files_total=files_total, bytes_total=bytes_total,
                         note=note)

    def _update(self, files: int | None = None, nbytes: int | None = None, *,
                files_total: int | None = None, bytes_total: int | None = None,
                note: str | None = None) -> None:
        if self.current is None:
            self._phase("working")
        assert self.current is not None
        f = self.state[self.current]
        for k, v in (("files", files), ("nbytes", nbytes), ("files_total", files_total),
                     ("bytes_total", bytes_total), ("note", note)):
            if v is not None:
                f[k] = v
        # the bar follows bytes when their total is known, else files
        total, done = ((f["bytes_total"], f["nbytes"]) if f["bytes_total"]
                       else (f["files_total"], f["files"]))
        self.rich.update(self.current, total=total, completed=done, **f)

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        with self.lock:
            if self.current is None:
                self._phase("working")
            assert self.current is not None
            f = self.state[self.current]
            self._update(f["files"] + files, f["nbytes"] + nbytes)

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self.lock:
            if self.tasks.get(stage) != self.current or self.current is None:
                self._phase(stage)
            self._update(done, files_total=total or None)


def human_count(n: float) -> str:
    return f"{n:,.0f}"


def _size(n: float) -> str:
    return human_bytes(n)


def _elapsed(task: Any) -> float:
    """Seconds the phase has run (frozen when it ended)."""
    end = task.fields["t_end"] or time.monotonic()
    return max(end - float(task.fields["t0"]), 1e-6)


def _eta_seconds(task: Any) -> float | None:
    """Time left at the phase's average speed so far, or None (no total, no progress)."""
    f = task.fields
    for done, total in ((f["nbytes"], f["bytes_total"]), (f["files"], f["files_total"])):
        if total and done:
            return max(0.0, _elapsed(task) * float(total - done) / float(done))
    return None


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


class _CountsColumn(ProgressColumn):
    """'1,234/5,000 files  1.2 GiB/4.0 GiB' (without '/total' while unknown)."""

    def render(self, task: Any) -> Text:
        f = task.fields
        files = human_count(f["files"]) + (
            f"/{human_count(f['files_total'])}" if f["files_total"] else "")
        text = f"{files} {f['unit']}"
        if f["nbytes"] or f["bytes_total"]:
            text += f"  {_size(f['nbytes'])}" + (
                f"/{_size(f['bytes_total'])}" if f["bytes_total"] else "")
        if f["note"]:
            text += f"  {f['note']}"
        return Text(text)


class _RateColumn(ProgressColumn):
    """Bytes per second where bytes move, else files per second (phase average)."""

    def render(self, task: Any) -> Text:
        f = task.fields
        dt = _elapsed(task)
        if f["nbytes"]:
            return Text(f"{_size(f['nbytes'] / dt)}/s")
        return Text(f"{human_count(f['files'] / dt)} {f['unit']}/s")


class _EtaColumn(ProgressColumn):
    def render(self, task: Any) -> Text:
        if task.fields["t_end"] is not None:
            return Text("done")
        eta = _eta_seconds(task)
        return Text("ETA " + ("-" if eta is None else _duration(eta)))
