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

    Indented for a terminal; compact for a pipe (json_compact), where the C encoder
    is ten times faster (a report of thousands of groups otherwise takes a quarter
    second)."""
    text = json_text(doc) if json_compact() else json.dumps(doc, ensure_ascii=True, indent=1)
    sys.stdout.write(text + "\n")


def json_compact() -> bool:
    """Whether print_json writes compact JSON now (stdout is not a terminal): a
    command that builds parts of its document ahead (dedupd scan's groups) asks."""
    return not sys.stdout.isatty()


def json_text(doc: Any) -> str:
    """The compact JSON print_json writes to a pipe (without its newline), for the
    parts of a document made ahead to be the same text."""
    return json.dumps(doc, ensure_ascii=True)
