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
            msg += "\n" + self.formatException(record.exc_info)
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
