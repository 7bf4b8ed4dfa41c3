"""Logging to stderr; journald-aware.

Under journald (JOURNAL_STREAM set) each line starts with the `<N>` syslog
priority so the journal keeps the level; --log-json writes one JSON object per line.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from dedupd.errors import one_line

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool, as_json: bool) -> None:
        super().__init__()
        self.journal, self.as_json = journal, as_json

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if not self.as_json:  # JSON escapes them itself
            # a file name a user chose (newline, ESC, C1): one escaped line, never a
            # line of its own in the journal
            msg = one_line(msg)
        if record.exc_info:
            exc = record.exc_info[1]
            if self.as_json or exc is None:
                msg += "\n" + self.formatException(record.exc_info)
            else:
                msg += "\n" + _escaped_traceback(exc)
        if self.as_json:
            doc = {"time": round(record.created, 3), "level": record.levelname.lower(),
                   "logger": record.name, "msg": msg}
            doc.update(getattr(record, "fields", {}))
            import json  # here: `dedupd scan` forks its walk before json is needed

            line = json.dumps(doc, ensure_ascii=True)
        elif self.journal:
            line = f"{record.name}: {msg}"
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            line = f"{stamp} {record.levelname.lower():7} {record.name}: {msg}"
        if self.journal:
            pri = _PRIORITY.get(record.levelno, 6)
            line = "\n".join(f"<{pri}>{part}" for part in line.split("\n"))
        return line


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _escaped_traceback(exc: BaseException) -> str:
    """The traceback Python prints (the chain, oldest first), with each exception's own
    text as one escaped line: a file name it quotes (newline, ESC, C1) never makes a
    line of its own. The frames are dedupd's source lines, printed as they are."""
    import traceback  # here: only a record with a traceback needs it

    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    link = ""
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append((cur, link))
        if cur.__cause__ is not None:
            cur, link = cur.__cause__, _CAUSE
        elif cur.__context__ is not None and not cur.__suppress_context__:
            cur, link = cur.__context__, _CONTEXT
        else:
            cur = None
    out: list[str] = []
    for e, between in reversed(chain):
        if e.__traceback__ is not None:
            out.append("Traceback (most recent call last):\n")
            out.extend(traceback.format_tb(e.__traceback__))
        text = "".join(traceback.format_exception_only(type(e), e)).rstrip("\n")
        out.append(one_line(text) + "\n" + between)
    return "".join(out).rstrip("\n")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is at each record: while a progress display is
    drawn (dedupd/progress.py), that is rich's stand-in, which prints the line
    above the display instead of through it."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def setup(level: str = "info", as_json: bool = False) -> None:
    """Configure the root logger once for the process (idempotent)."""
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(journal, as_json))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
