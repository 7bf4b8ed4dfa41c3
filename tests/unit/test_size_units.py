"""`dedupd scan` reads a plain --min-size before argparse runs (scan_first, to fork its
walk early) and argparse reads it again (parse_size): both from one unit table
(commands.SIZE_UNITS), so a walk started early is never taken with another size."""

from __future__ import annotations

import argparse

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
