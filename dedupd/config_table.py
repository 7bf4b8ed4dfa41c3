"""Typed reads from one TOML table of the config (used by dedupd/config.py).

Every read names its key in errors (ConfigError: file, key, problem; exit 78)
and is remembered, so done() can refuse the keys nobody read: a typo must not
silently fall back to a default.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dedupd.errors import ConfigError

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # TOML's integers


class Table:
    """Typed reads from one TOML table; remembers which keys were used."""

    def __init__(self, file: str, where: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, where, f"must be a table, got {_kind(data)}")
        self.file, self.where, self.data = file, where, data
        self.used: set[str] = set()

    def key(self, k: str) -> str:
        return f"{self.where}.{k}" if self.where else k

    def err(self, k: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(k), problem)

    def _get(self, k: str, types: tuple[type, ...], what: str) -> Any:
        self.used.add(k)
        v = self.data.get(k)
        if v is None:
            return None
        if isinstance(v, bool) and bool not in types:
            raise self.err(k, f"must be {what}, got a boolean")
        if not isinstance(v, types):
            raise self.err(k, f"must be {what}, got {_kind(v)}")
        return v

    def text(self, k: str, default: Any, choices: tuple[str, ...] = ()) -> Any:
        v = self._get(k, (str,), "a string")
        if v is None:
            return default
        if choices and v not in choices:
            raise self.err(k, f"must be one of {', '.join(choices)}; got {v!r}")
        return v

    def required_str(self, k: str) -> str:
        v = self.text(k, None)
        if not v:
            raise self.err(k, "is required")
        return str(v)

    def integer(self, k: str, default: Any, lo: int | None = None, hi: int | None = None) -> Any:
        """An integer key within [lo, hi]; TOML's 64-bit range when no bound is given
        (tomllib takes any size, the index stores 64 bits)."""
        v = self._get(k, (int,), "an integer")
        if v is None:
            return default
        lo = INT64_MIN if lo is None else lo
        hi = INT64_MAX if hi is None else hi
        if v < lo:
            raise self.err(k, f"must be >= {lo}; got {v}")
        if v > hi:
            raise self.err(k, f"must be <= {hi}; got {v}")
        return v

    def number(self, k: str, default: float, lo: float = 0.0) -> float:
        v = self._get(k, (int, float), "a number")
        if v is None:
            return default
        # (an integer beyond a float's range: math.isfinite would raise OverflowError)
        if (isinstance(v, int) and not INT64_MIN <= v <= INT64_MAX) or not math.isfinite(v):
            # nan compares false with everything, so it would pass every bound below
            # and later reach the status socket as invalid JSON
            raise self.err(k, f"must be a finite number; got {v}")
        if v < lo:
            raise self.err(k, f"must be >= {lo}; got {v}")
        return float(v)

    def optional_flag(self, k: str) -> bool | None:
        v = self._get(k, (bool,), "true or false")
        return None if v is None else bool(v)

    def flag(self, k: str, default: bool) -> bool:
        v = self._get(k, (bool,), "true or false")
        return default if v is None else bool(v)

    def path(self, k: str, default: Path | None) -> Path | None:
        v = self.text(k, None)
        if v is None:
            return default
        if not v.startswith("/"):
            raise self.err(k, f"must be an absolute path; got {v!r}")
        return Path(v)

    def required_path(self, k: str) -> Path:
        p = self.path(k, None)
        if p is None:
            raise self.err(k, "is required")
        return p

    def strs(self, k: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        v = self._get(k, (list,), "a list of strings")
        if v is None:
            return default
        if not all(isinstance(x, str) for x in v):
            raise self.err(k, "must be a list of strings")
        return tuple(v)

    def paths(self, k: str) -> tuple[Path, ...]:
        items = self.strs(k)
        for x in items:
            if not x.startswith("/"):
                raise self.err(k, f"must hold absolute paths; got {x!r}")
        return tuple(Path(x) for x in items)

    def sub(self, k: str) -> Table:
        self.used.add(k)
        return Table(self.file, self.key(k), self.data.get(k, {}))

    def names(self) -> list[str]:
        return list(self.data)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.err(unknown[0], "unknown key (see etc/dedupd.toml for the valid keys)")


def _kind(v: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)
