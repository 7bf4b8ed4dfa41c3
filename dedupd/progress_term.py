"""The drawing behind dedupd.progress.TerminalProgress (imported only when drawn).

rich's Progress, transient, on stderr, refreshed REFRESH_PER_SECOND times a
second from its own thread: one line per phase with its name, a bar (bytes
when their total is known, else files; a pulse while neither total is), the
counts done/total, the phase's average rate and the ETA at that rate. Every
column reads the phase's PhaseState; nothing is pushed into rich's tasks but
the phase itself when it first appears.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import Progress as RichProgress
from rich.progress import ProgressColumn, Task, TextColumn
from rich.progress_bar import ProgressBar
from rich.text import Text

from dedupd.output import human_bytes
from dedupd.progress import PhaseState, TerminalProgress

REFRESH_PER_SECOND = 4


class Display:
    """Draws a TerminalProgress's phases until stop()."""

    def __init__(self, source: TerminalProgress) -> None:
        self.rich = _Rich(source, TextColumn("[bold]{task.description}"), _Bar(), _Counts(),
                          _Rate(), _Eta(), console=Console(file=sys.stderr, force_terminal=True),
                          transient=True, refresh_per_second=REFRESH_PER_SECOND,
                          redirect_stdout=False)

    def start(self) -> None:
        self.rich.start()

    def stop(self) -> None:
        self.rich.stop()


class _Rich(RichProgress):
    """rich's Progress, with one task per phase of the source, added as they begin."""

    def __init__(self, source: TerminalProgress, *columns: Any, **kw: Any) -> None:
        self.source = source
        self.shown: set[str] = set()
        self.ready = False  # rich's __init__ renders once, before it can add tasks
        super().__init__(*columns, **kw)
        self.ready = True

    def get_renderables(self) -> Iterable[RenderableType]:
        if not self.ready:
            yield from super().get_renderables()
            return
        with self.source.lock:
            new = [ph for name, ph in self.source.phases.items() if name not in self.shown]
        for ph in new:
            self.shown.add(ph.name)
            self.add_task(ph.name, total=None, ph=ph)
        yield self.make_tasks_table(self.tasks)


def _ph(task: Task) -> PhaseState:
    ph: PhaseState = task.fields["ph"]
    return ph


class _Bar(ProgressColumn):
    def render(self, task: Task) -> ProgressBar:
        ph = _ph(task)
        total, done = ((ph.bytes_total, ph.nbytes) if ph.bytes_total
                       else (ph.files_total, ph.files))
        if ph.t_end is not None:  # over: a full bar whatever the totals said
            total = done = max(done, 1)
        return ProgressBar(total=total, completed=min(done, total or done), width=20,
                           pulse=total is None, animation_time=task.get_time())


class _Counts(ProgressColumn):
    """'1,234/5,000 files  1.2 GiB/4.0 GiB  note' (no '/total' while unknown)."""

    def render(self, task: Task) -> Text:
        ph = _ph(task)
        text = f"{ph.files:,}" + (f"/{ph.files_total:,}" if ph.files_total else "")
        text += f" {ph.unit}"
        if ph.nbytes or ph.bytes_total:
            text += f"  {human_bytes(ph.nbytes)}" + (
                f"/{human_bytes(ph.bytes_total)}" if ph.bytes_total else "")
        if ph.note:
            text += f"  {ph.note}"
        return Text(text)


class _Rate(ProgressColumn):
    """Bytes per second where bytes move, else files per second (phase average)."""

    def render(self, task: Task) -> Text:
        ph = _ph(task)
        if ph.nbytes:
            return Text(f"{human_bytes(ph.nbytes / ph.elapsed)}/s")
        return Text(f"{ph.files / ph.elapsed:,.0f} {ph.unit}/s")


class _Eta(ProgressColumn):
    def render(self, task: Task) -> Text:
        ph = _ph(task)
        if ph.t_end is not None:
            return Text("done")
        eta = ph.eta()
        return Text("ETA " + ("-" if eta is None else _duration(eta)))


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"
