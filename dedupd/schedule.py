"""Schedules of backup jobs: parsing and the next due time. Pure (no I/O), so the
config loader checks a schedule before anything runs.

A schedule is "daily HH:MM" (local time), "hourly", or "every N<unit>" with
unit s, m, h or d ("every 6h").
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from dedupd.errors import ConfigError

_EVERY = re.compile(r"^every\s+(\d+(?:\.\d+)?)\s*([smhd])$", re.ASCII)
_DAILY = re.compile(r"^daily\s+(\d{1,2}):(\d{2})$", re.ASCII)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Schedule:
    """Either an interval (seconds) or a daily wall-clock time."""

    text: str
    interval: float | None = None
    hour: int = 0
    minute: int = 0

    def next_after(self, t: float) -> float:
        """The first due time strictly after t (epoch seconds)."""
        if self.interval is not None:
            return t + self.interval
        now = dt.datetime.fromtimestamp(t)
        due = now.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        if due.timestamp() <= t:
            # next calendar day at the same wall time (DST-safe: rebuilt from the date)
            tomorrow = (now + dt.timedelta(days=1)).date()
            due = dt.datetime.combine(tomorrow, dt.time(self.hour, self.minute))
        return due.timestamp()


def parse_schedule(text: str, key: str = "schedule", file: str = "<config>") -> Schedule:
    """Parse a schedule string; ConfigError (exit 78) naming key when it is not one."""
    s = " ".join(text.strip().lower().split())
    if s == "hourly":
        return Schedule(text, interval=3600.0)
    if m := _EVERY.match(s):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
        if seconds < 60:
            raise ConfigError(file, key, f"{text!r}: the shortest interval is 60s")
        return Schedule(text, interval=seconds)
    if m := _DAILY.match(s):
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour > 23 or minute > 59:
            raise ConfigError(file, key, f"{text!r}: no such time of day")
        return Schedule(text, hour=hour, minute=minute)
    raise ConfigError(file, key, f"{text!r} is not a schedule (use \"daily 03:00\", "
                      "\"hourly\" or \"every 6h\")")
