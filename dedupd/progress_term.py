"""The drawing behind dedupd.progress.TerminalProgress (imported only when drawn).

One line per phase, redrawn in place on stderr REFRESH_PER_SECOND times a
second from a thread of its own and erased at the end (transient): the phase's
name, a bar (bytes when their total is known, else files; a pulse while neither
total is), the counts done/total, the phase's average rate and the ETA at that
rate. Every line reads the phase's PhaseState. Lines written to sys.stderr
while the display is up (log records) are printed above it, not through it.

rich styles the parts (rich.style: the SGR codes; no colours under NO_COLOR)
and measures them in terminal cells (rich.cells: wide characters, cropping to
the terminal's width); the layout and the four cursor codes are ours. rich's
Progress/Live/Console stack costs ~30 ms of CPU to import and start and ~1.3 ms
per refresh (Console and Table layout): more than 2% of a one-second scan.
These two modules cost ~6 ms once and ~0.05 ms per refresh
(bench/bench_progress.py measures both).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from itertools import groupby
from typing import Any, TextIO

from rich.cells import cell_len, set_cell_size
from rich.color import ColorSystem
from rich.style import Style

from dedupd.output import human_bytes
from dedupd.progress import PhaseState, TerminalProgress

REFRESH_PER_SECOND = 4
BAR_WIDTH = 20
PULSE_WIDTH = 5  # cells of the segment that runs along a bar without a total

_NAME = Style(bold=True)
_BAR_DONE = Style(color="magenta")
_BAR_FINISHED = Style(color="green")
_BAR_BACK = Style(color="bright_black")

# carriage return, erase the line, cursor up a line, hide and show the cursor
_CR, _ERASE, _UP, _HIDE, _SHOW = "\r", "\x1b[2K", "\x1b[1A", "\x1b[?25l", "\x1b[?25h"

Piece = tuple[str, Style | None]  # text and its style (None: plain)


class Display:
    """Draws a TerminalProgress's phases on stream (sys.stderr) until stop()."""

    def __init__(self, source: TerminalProgress, stream: TextIO | None = None) -> None:
        self.source = source
        self.out = stream or sys.stderr
        # NO_COLOR (no-color.org): bold names, the bar's done part only
        colour = os.environ.get("NO_COLOR", "") == ""
        self.done: Style | None
        self.finished: Style | None
        self.back: Style | None
        self.done, self.finished, self.back = ((_BAR_DONE, _BAR_FINISHED, _BAR_BACK) if colour
                                               else (None, None, None))
        self.bar = "━" if "utf" in (getattr(self.out, "encoding", "") or "").lower() else "-"
        self.rest = self.bar if colour else " "
        self.lock = threading.RLock()  # the screen: frames and lines written above them
        self.shown = 0  # lines of the display on the screen now
        self.last = ""  # the frame they show
        self.broken = False  # the terminal refused a write: draw no more
        self.live = False  # between start() and stop()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self.stderr: Any = None  # what sys.stderr was before the display took it over

    def start(self) -> None:
        with self.lock:
            if sys.stderr is self.out:
                self.stderr, sys.stderr = sys.stderr, LinesAbove(self)
            self.live = True
            self._write(_HIDE + self._redraw(force=True))
        self.thread.start()

    def stop(self) -> None:
        """Draw the last numbers, then erase the display and give stderr back."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        with self.lock:
            if isinstance(sys.stderr, LinesAbove) and sys.stderr.display is self:
                sys.stderr.flush()
                sys.stderr = self.stderr
            self.live = False
            self._write(self._redraw() + self._erase() + _SHOW)

    def refresh(self) -> None:
        """Draw the current numbers now (the display's thread does, every
        1/REFRESH_PER_SECOND s); nothing is written when no line changed."""
        with self.lock:
            self._write(self._redraw())

    def _loop(self) -> None:
        while not self.stopping.wait(1 / REFRESH_PER_SECOND) and not self.broken:
            self.refresh()

    def above(self, text: str) -> None:
        """Print whole lines (ending in a newline) above the display (once it is
        stopped, to whoever still holds the stand-in: just the lines)."""
        with self.lock:
            if self.live:
                self._write(self._erase() + text + self._redraw(force=True))
            else:
                self._write(text)

    def _write(self, text: str) -> None:
        if not text or self.broken:
            return
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):  # the terminal went away: the command goes on
            self.broken = True

    def _erase(self) -> str:
        """Codes that erase the display, leaving the cursor where its first line was."""
        n, self.shown, self.last = self.shown, 0, ""
        return _CR + (_ERASE + _UP) * (n - 1) + _ERASE if n else ""

    def _redraw(self, force: bool = False) -> str:
        """Codes that replace the frame on the screen by the current one ("" when
        nothing changed, unless force)."""
        cols, rows = _size(self.out)
        with self.source.lock:  # the phases' numbers, as of now
            phases = list(self.source.phases.values())[-(rows - 1):]
            lines = self._frame(phases, cols - 1)  # the last column: no wrapping
        text = "\n".join(lines)
        if text == self.last and not force:
            return ""
        erase = self._erase()
        self.shown, self.last = len(lines), text
        return erase + text

    def _frame(self, phases: list[PhaseState], width: int) -> list[str]:
        now = time.monotonic()
        names = [ph.name for ph in phases]
        counts = [_counts(ph) for ph in phases]
        rates = [_rate(ph) for ph in phases]
        wn, wc, wr = (max((cell_len(s) for s in col), default=0)
                      for col in (names, counts, rates))
        lines = []
        for ph, name, count, rate in zip(phases, names, counts, rates, strict=True):
            pieces: list[Piece] = [(_pad(name, wn), _NAME), (" ", None)]
            pieces += self._bar(ph, now)
            pieces += [(" " + _pad(count, wc) + " " + rate.rjust(wr) + " " + _eta(ph), None)]
            lines.append(_render(pieces, width))
        return lines

    def _bar(self, ph: PhaseState, now: float) -> list[Piece]:
        total, done = ((ph.bytes_total, ph.nbytes) if ph.bytes_total
                       else (ph.files_total, ph.files))
        if ph.t_end is not None:  # over: a full bar whatever the totals said
            return [(self.bar * BAR_WIDTH, self.finished)]
        if not total:  # a segment running along the bar, once every 1.5 s
            at = int(now % 1.5 / 1.5 * BAR_WIDTH)
            lit = {(at + i) % BAR_WIDTH for i in range(PULSE_WIDTH)}
            return [((self.bar if on else self.rest) * len(list(run)),
                     self.done if on else self.back)
                    for on, run in groupby(i in lit for i in range(BAR_WIDTH))]
        full = min(BAR_WIDTH, BAR_WIDTH * done // total)
        return [(self.bar * full, self.done), (self.rest * (BAR_WIDTH - full), self.back)]


def _render(pieces: list[Piece], width: int) -> str:
    """The pieces styled for the terminal, cropped to width cells."""
    out = []
    for text, style in pieces:
        size = cell_len(text)
        if size > width:
            text, size = set_cell_size(text, width), width
        width -= size
        out.append(style.render(text, color_system=ColorSystem.STANDARD) if style else text)
        if width <= 0:
            break
    return "".join(out)


class LinesAbove:
    """sys.stderr while a display is drawn: whole lines go above the display;
    anything else is the real stream's."""

    def __init__(self, display: Display) -> None:
        self.display = display
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        head, sep, tail = self.pending.rpartition("\n")
        if sep:
            self.pending = tail
            self.display.above(head + sep)
        return len(text)

    def flush(self) -> None:
        """A partial line is printed as a line of its own (the display needs the
        cursor back)."""
        if self.pending:
            text, self.pending = self.pending, ""
            self.display.above(text + "\n")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.display.out, name)


def _size(stream: TextIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
        return max(size.columns, 20), max(size.lines, 2)
    except (OSError, ValueError, AttributeError):
        return 80, 24


def _pad(text: str, width: int) -> str:
    return text + " " * (width - cell_len(text))


def _counts(ph: PhaseState) -> str:
    """'1,234/5,000 files  1.2 GiB/4.0 GiB  note' (no '/total' while unknown)."""
    text = f"{ph.files:,}" + (f"/{ph.files_total:,}" if ph.files_total else "")
    text += f" {ph.unit}"
    if ph.nbytes or ph.bytes_total:
        text += f"  {human_bytes(ph.nbytes)}" + (
            f"/{human_bytes(ph.bytes_total)}" if ph.bytes_total else "")
    if ph.note:
        text += f"  {ph.note}"
    return text


def _rate(ph: PhaseState) -> str:
    """Bytes per second where bytes move, else files per second (phase average)."""
    if ph.nbytes:
        return f"{human_bytes(ph.nbytes / ph.elapsed)}/s"
    return f"{ph.files / ph.elapsed:,.0f} {ph.unit}/s"


def _eta(ph: PhaseState) -> str:
    if ph.t_end is not None:
        return "done"
    eta = ph.eta()
    return "ETA " + ("-" if eta is None else _duration(eta))


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"
