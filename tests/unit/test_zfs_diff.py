"""The `zfs diff -FHt` parser, against OpenZFS-format output kept as a fixture.

The fixture is written by hand in the exact format OpenZFS's libzfs_diff
prints (tab separated, 4-digit octal escapes for bytes outside printable ASCII,
space and backslash); zfs-fuse on the test machines has no `zfs diff`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dedupd.volumes.zfs_diff import DiffEntry, DiffFormatError, parse_diff, parse_line, unmangle

FIXTURE = Path(__file__).parent.parent / "fixtures/zfs_diff/openzfs-2.2-FHt.txt"


def test_parses_every_kind_of_change() -> None:
    got = parse_diff(FIXTURE.read_bytes())
    assert got == [
        DiffEntry("M", "/", b"/tank/data/", None, 1763800000_100000000),
        DiffEntry("+", "F", b"/tank/data/new file.txt", None, 1763800001_000000001),
        DiffEntry("-", "F", b"/tank/data/old.bin", None, 1763800002_000000002),
        DiffEntry("R", "F", b"/tank/data/a.txt", b"/tank/data/renamed/b.txt",
                  1763800003_000000003),
        DiffEntry("M", "F", "/tank/data/café.jpg".encode(), None, 1763800004_000000004),
        DiffEntry("M", "F", b"/tank/data/linked.bin", None, 1763800005_000000005, 1),
        DiffEntry("R", "/", b"/tank/data/dir one", b"/tank/data/dir two", 1763800006_000000006),
        DiffEntry("+", "F", b"/tank/data/back\\slash\ttab", None, 1763800007_000000007),
        DiffEntry("-", "@", b"/tank/data/link-to-old", None, 1763800008_000000008),
        DiffEntry("+", "/", b"/tank/data/fresh", None, 1763800009_000000009),
        DiffEntry("M", "F", b"/tank/data/unlinked.bin", None, 1763800010_000000010, -2),
    ]


def test_unmangle_non_utf8_and_three_digit_escapes() -> None:
    assert unmangle(b"a\\0377b") == b"a\xffb"
    assert unmangle(b"old\\040style") == b"old style"
    assert unmangle(b"plain") == b"plain"


@pytest.mark.parametrize("line", [b"x", b"1.0\tX\tF\t/p", b"1.0\tR\tF\t/only-old",
                                  b"1.0\tM\tF\t/p\tjunk"])
def test_rejects_malformed_lines(line: bytes) -> None:
    with pytest.raises(DiffFormatError):
        parse_line(line)
