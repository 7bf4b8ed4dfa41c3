"""Progress of a long command on a terminal: phase, files and bytes done and to
do, rate, ETA (drawn on stderr with rich's styles, a few times a second).

Contract: nothing at all is written unless enabled, which by default means
stderr is a terminal; a pipe or a file (cron, systemd, tests capturing output)
gets no progress and no escape codes. The display is transient: it is gone
when the command prints its report.

The work reports through the `Progress` protocol below, from any thread.
TerminalProgress only stores the numbers (PhaseState, under a lock): it costs
a report next to nothing. The drawing (dedupd/progress_term.py) starts only
once the command has run DELAY seconds, in a thread of its own, reading
those numbers: a command that ends sooner never imports rich (~6 ms of CPU
for the parts it uses) nor draws, and a longer one pays that once. `NO_PROGRESS` does nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Protocol

# Seconds before the display appears; DEDUPD_PROGRESS_DELAY overrides it (0:
# at once, drawn when the display is entered, as the tests want).
DELAY = 1.0


class Progress(Protocol):
    """Where a long operation reports how far it is (see the module docstring)."""

    def phase(self, name: str, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        """Start (or go back to) the phase called name; totals when known."""

    def update(self, files: int | None = None, nbytes: int | None = None, *,
               files_total: int | None = None, bytes_total: int | None = None,
               note: str | None = None) -> None:
        """Set the current phase's counts (absolute values; None leaves one as is)."""

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        """Add to the current phase's counts."""

    def __call__(self, stage: str, done: int, total: int) -> None:
        """The (stage, done, total) callback form: phase stage, done files of total."""


class NullProgress:
    """Reports go nowhere (not a terminal, or --no-progress). False in a test, so
    that `if progress:` skips even the counting a report would need."""

    def __bool__(self) -> bool:
        return False

    def phase(self, name: str, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        pass

    def update(self, files: int | None = None, nbytes: int | None = None, *,
               files_total: int | None = None, bytes_total: int | None = None,
               note: str | None = None) -> None:
        pass

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        pass

    def __call__(self, stage: str, done: int, total: int) -> None:
        pass

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


NO_PROGRESS = NullProgress()


def open_progress(enabled: bool | None, unit: str = "files") -> Any:
    """A display on stderr when enabled (None: when stderr is a terminal): a
    Progress that is also a context manager (the display lives inside the
    `with`). unit names what is counted ("files", "chunks")."""
    if enabled is None:
        enabled = _is_terminal(sys.stderr)
    return TerminalProgress(unit) if enabled else NO_PROGRESS


def _delay() -> float:
    try:
        return max(0.0, float(os.environ.get("DEDUPD_PROGRESS_DELAY", DELAY)))
    except ValueError:
        return DELAY


def _is_terminal(stream: Any) -> bool:
    """A terminal that can draw in place: not TERM=dumb (nor unknown), which
    cannot move its cursor."""
    if os.environ.get("TERM", "").strip().lower() in ("dumb", "unknown"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


class PhaseState:
    """One phase's numbers, as the display reads them (None: not known). A plain
    class, not a dataclass: `dedupd scan` imports this module, and an unchanged
    rescan nothing else that needs the dataclasses module (~10 ms of its CPU)."""

    __slots__ = ("name", "unit", "files", "nbytes", "files_total", "bytes_total", "note",
                 "t0", "t_end")

    def __init__(self, name: str, unit: str) -> None:
        self.name, self.unit = name, unit
        self.files = self.nbytes = 0
        self.files_total: int | None = None
        self.bytes_total: int | None = None
        self.note = ""
        self.t0 = time.monotonic()
        self.t_end: float | None = None  # set when the next phase began

    @property
    def elapsed(self) -> float:
        return max((self.t_end or time.monotonic()) - self.t0, 1e-6)

    def eta(self) -> float | None:
        """Seconds left at the phase's average speed so far (bytes when their total
        is known, else files), or None."""
        for done, total in ((self.nbytes, self.bytes_total), (self.files, self.files_total)):
            if total and done:
                return max(0.0, self.elapsed * (total - done) / done)
        return None


class TerminalProgress:
    """Progress for a terminal: records the phases; draws them after DELAY s."""

    def __init__(self, unit: str = "files", delay: float | None = None) -> None:
        self.unit = unit
        self.lock = threading.Lock()  # the numbers (the display's thread reads them)
        self._life = threading.Lock()  # starting and stopping the display
        self.phases: dict[str, PhaseState] = {}  # in the order they began
        self.current: PhaseState | None = None
        self.display: Any = None  # dedupd.progress_term.Display, once drawn
        self._closed = False
        self.delay = _delay() if delay is None else delay
        self._timer = threading.Timer(self.delay, self._draw)
        self._timer.daemon = True

    def __bool__(self) -> bool:
        return True

    def __enter__(self) -> TerminalProgress:
        if self.delay <= 0:  # at once: up before the work begins, however short it is
            self._draw()
        else:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._life:
            self._closed = True
            if self.display is not None:
                self.display.stop()  # draws the last numbers, then clears the lines
                self.display = None

    def _draw(self) -> None:
        """Start the display (in the timer's thread). A display that fails to start
        is left out: progress is never worth failing or cluttering the command."""
        try:
            from dedupd.progress_term import Display

            display = Display(self)
            with self._life:
                if not self._closed:
                    display.start()
                    self.display = display
        except Exception:
            import logging

            logging.getLogger("dedupd").debug("no progress display", exc_info=True)

    def phase(self, name: str, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        with self.lock:
            self._phase(name)
            self._set(files_total=files_total, bytes_total=bytes_total)

    def _phase(self, name: str) -> PhaseState:
        ph = self.phases.get(name)
        if ph is None:
            if self.current is not None:  # a new phase: the one before is over
                self.current.t_end = time.monotonic()
            ph = self.phases[name] = PhaseState(name, self.unit)
        ph.t_end = None
        self.current = ph
        return ph

    def update(self, files: int | None = None, nbytes: int | None = None, *,
               files_total: int | None = None, bytes_total: int | None = None,
               note: str | None = None) -> None:
        with self.lock:
            self._set(files, nbytes, files_total, bytes_total, note)

    def _set(self, files: int | None = None, nbytes: int | None = None,
             files_total: int | None = None, bytes_total: int | None = None,
             note: str | None = None) -> None:
        ph = self.current or self._phase("working")
        if files is not None:
            ph.files = files
        if nbytes is not None:
            ph.nbytes = nbytes
        if files_total is not None:
            ph.files_total = files_total
        if bytes_total is not None:
            ph.bytes_total = bytes_total
        if note is not None:
            ph.note = note

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        with self.lock:
            ph = self.current or self._phase("working")
            ph.files += files
            ph.nbytes += nbytes

    def __call__(self, stage: str, done: int, total: int) -> None:
        with self.lock:
            if self.current is None or self.current.name != stage:
                self._phase(stage)
            self._set(done, files_total=total or None)
