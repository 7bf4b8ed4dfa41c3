"""Shared helpers for what commands print: paths, sizes, JSON (progress: dedupd.progress)."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any


def show_path(path: bytes | str) -> str:
    """A path for a human: undecodable bytes as \\xNN, control characters escaped.

    JSON output uses surrogateescape instead (see docs/output.md).
    """
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: _esc(m.group()), text) if _CONTROL.search(text) else text


# C0, DEL and C1 (U+0080-U+009F: xterm and the Linux console read U+009B as CSI and
# U+009D as OSC, as they read ESC [ and ESC ])
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _esc(ch: str) -> str:
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch) or (
        f"\\x{ord(ch):02x}" if ord(ch) < 32 or "\x7f" <= ch <= "\x9f" else ch)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def print_json(doc: Any) -> None:
    """One JSON document on stdout. ensure_ascii keeps surrogate escapes (\\udcXX).

    Indented for a terminal; compact for a pipe, where the C encoder is ten
    times faster (a report of thousands of groups otherwise takes a quarter second).
    """
    indent = 1 if sys.stdout.isatty() else None
    sys.stdout.write(json.dumps(doc, ensure_ascii=True, indent=indent) + "\n")
