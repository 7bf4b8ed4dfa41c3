"""`dedupd scan` reads a plain --min-size before argparse runs (scan_first, to fork its
walk early) and argparse reads it again (parse_size): both from one unit table
(commands.SIZE_UNITS), so a walk started early is never taken with another size."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from dedupd.commands.common import parse_size
from dedupd.commands.scan_first import _size


@pytest.mark.parametrize("text", ["0", "4096", "7k", "64K", "1m", "2G", "3t", "5T"])
def test_the_early_reading_of_a_size_is_parse_sizes(text: str) -> None:
    assert _size(text) == parse_size(text)


@pytest.mark.parametrize("text", ["1P", "x", "", "1.5K"])
def test_a_form_neither_reads_is_left_to_argparse(text: str) -> None:
    assert _size(text) is None
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize("text", ["\u0663", "1\u0660K", "\uff11M", "\u09e7"])
def test_digits_of_another_script_are_refused_by_both(text: str) -> None:
    """\\d and float() read Arabic-Indic or fullwidth digits as numbers: parse_size took
    '٣' as 3 bytes where the early reading left it to argparse."""
    assert _size(text) is None
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


def test_scan_refuses_a_size_or_duration_in_other_digits(tmp_path: Path) -> None:
    for opt in (["--min-size", "\u0663"], ["--min-size=\u0663K"], ["--settle", "\u0663"]):
        r = subprocess.run([sys.executable, "-m", "dedupd", "scan", *opt, str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (opt, r.returncode, r.stderr)
        assert r.stderr.splitlines()[-1].startswith(
            "dedupd scan: error: argument " + opt[0].split("=")[0] + ": not a"), r.stderr
