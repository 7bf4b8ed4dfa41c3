"""Progress of a long command on a terminal: phase, files and bytes done and to
do, rate, ETA (drawn by rich on stderr, a few times a second).

Contract: nothing at all is written unless enabled, which by default means
stderr is a terminal; a pipe or a file (cron, systemd, tests capturing output)
gets no progress and no escape codes. The display is transient: it is gone
when the command prints its report. rich is imported only when a display is
drawn, so a command run from a script does not pay for the import.

The work reports through the `Progress` protocol below, from any thread:
update() and advance() only store numbers (under rich's lock); rendering
happens in rich's refresh thread, so reporting every batch costs next to
nothing. `NO_PROGRESS` is the do-nothing implementation.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


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
    if not enabled:
        return NO_PROGRESS
    from dedupd.progress_term import TerminalProgress

    return TerminalProgress(unit)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced stream
        return False
