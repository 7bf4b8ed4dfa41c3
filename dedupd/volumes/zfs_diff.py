"""Parser for `zfs diff -FHt` output (OpenZFS).

One line per change, tab separated: `<ctime sec.nsec> <change> <type> <path>`
and, for a rename, `<new path>` as a fifth field; a change of the link count
alone ends with a `(+N)`/`(-N)` field. change is `+` created, `-` removed, `M`
modified, `R` renamed; type is `F` file, `/` directory, `@` symlink, `|` fifo,
`=` socket, `B`/`C` devices, `>` door, `P` event port. Names are mangled: every
byte outside printable ASCII, the space and the backslash become `\\NNNN`
(four octal digits; older releases printed three). Paths are absolute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESC = re.compile(rb"\\([0-7]{3,4})")
_LINKS = re.compile(rb"^\(([+-]\d+)\)$")
CHANGES = ("+", "-", "M", "R")


class DiffFormatError(ValueError):
    """A line that is not `zfs diff -FHt` output."""


@dataclass(frozen=True)
class DiffEntry:
    change: str
    kind: str
    path: bytes
    new_path: bytes | None = None
    ctime_ns: int | None = None
    link_delta: int | None = None


def unmangle(name: bytes) -> bytes:
    """Undo zfs diff's octal escapes: b'a\\0040b' -> b'a b' (bytes, not text)."""
    return _ESC.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), name)


def _ctime(field: bytes) -> int:
    sec, _, nsec = field.strip().partition(b".")
    return int(sec) * 10**9 + int((nsec or b"0").ljust(9, b"0")[:9])


def parse_line(line: bytes) -> DiffEntry:
    f = line.rstrip(b"\n").split(b"\t")
    if len(f) < 4:
        raise DiffFormatError(f"too few fields: {line!r}")
    ctime, change, kind, path = _ctime(f[0]), f[1].decode(), f[2].decode(), unmangle(f[3])
    if change not in CHANGES:
        raise DiffFormatError(f"unknown change {change!r}: {line!r}")
    new_path = delta = None
    if len(f) >= 5:
        m = _LINKS.match(f[4])
        if m:
            delta = int(m.group(1))
        elif change == "R":
            new_path = unmangle(f[4])
        else:
            raise DiffFormatError(f"unexpected fifth field: {line!r}")
    if change == "R" and new_path is None:
        raise DiffFormatError(f"rename without a new name: {line!r}")
    return DiffEntry(change, kind, path, new_path, ctime, delta)


def parse_diff(out: bytes) -> list[DiffEntry]:
    """Every entry of a `zfs diff -FHt` output, in order; blank lines ignored."""
    return [parse_line(ln) for ln in out.splitlines() if ln.strip()]
