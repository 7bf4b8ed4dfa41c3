"""FIEMAP: where a file's data lives, to tell shared extents from private ones.

Used before a dedupe (a destination already sharing every extent with the
reference is skipped, not re-deduped) and after it (the group is marked done
only once the destination's extents are the reference's).
"""

from __future__ import annotations

import fcntl
import struct
from dataclasses import dataclass

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FLAG_SYNC = 0x1  # flush dirty data first so delayed allocations have addresses
EXTENT_LAST = 0x1
EXTENT_UNKNOWN = 0x2
EXTENT_DELALLOC = 0x4
EXTENT_ENCODED = 0x8
EXTENT_INLINE = 0x200
EXTENT_SHARED = 0x2000
_HEAD = struct.Struct("=QQIIII")  # struct fiemap (32 bytes)
_EXT = struct.Struct("=QQQ2QI3I")  # struct fiemap_extent (56 bytes)
_BATCH = 256


@dataclass(frozen=True, slots=True)
class Extent:
    logical: int
    physical: int
    length: int
    flags: int

    @property
    def shared(self) -> bool:
        return bool(self.flags & EXTENT_SHARED)


def extents(fd: int, sync: bool = True) -> list[Extent]:
    """All extents of the open file fd, in logical order."""
    out: list[Extent] = []
    start = 0
    while True:
        buf = bytearray(_HEAD.size + _EXT.size * _BATCH)
        _HEAD.pack_into(buf, 0, start, (1 << 64) - 1 - start,
                        FLAG_SYNC if sync else 0, 0, _BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        mapped = _HEAD.unpack_from(buf, 0)[3]
        if mapped == 0:
            return out
        for k in range(mapped):
            logical, physical, length, _r0, _r1, flags, *_ = _EXT.unpack_from(
                buf, _HEAD.size + k * _EXT.size)
            out.append(Extent(logical, physical, length, flags))
        last = out[-1]
        if last.flags & EXTENT_LAST:
            return out
        start = last.logical + last.length


def first_physical(fd: int) -> int:
    """Physical address of the file's first extent (0 when none is mapped); one call,
    no flush: a sort key for reading files in disk order."""
    buf = bytearray(_HEAD.size + _EXT.size)
    _HEAD.pack_into(buf, 0, 0, (1 << 64) - 1, 0, 0, 1, 0)
    fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    if _HEAD.unpack_from(buf, 0)[3] == 0:
        return 0
    return int(_EXT.unpack_from(buf, _HEAD.size)[1])


def layout(exts: list[Extent]) -> list[tuple[int, int, int]]:
    """(logical, physical, length) runs with contiguous pieces merged.

    Filesystems split the same mapping differently (a deduped destination may
    list 16 MiB pieces of what the source lists as one extent), so files are
    compared on merged runs, never on the raw lists.
    """
    runs: list[tuple[int, int, int]] = []
    for e in exts:
        if runs:
            lo, ph, ln = runs[-1]
            if lo + ln == e.logical and ph + ln == e.physical:
                runs[-1] = (lo, ph, ln + e.length)
                continue
        runs.append((e.logical, e.physical, e.length))
    return runs


def comparable(exts: list[Extent]) -> bool:
    """Whether physical addresses mean anything (not inline, encoded-unknown or delalloc)."""
    bad = EXTENT_UNKNOWN | EXTENT_DELALLOC | EXTENT_INLINE
    return bool(exts) and not any(e.flags & bad for e in exts)


def same_extents(a: list[Extent], b: list[Extent]) -> bool:
    """True when a and b map every byte to the same physical blocks (fully shared)."""
    return comparable(a) and comparable(b) and layout(a) == layout(b)


def any_shared(exts: list[Extent]) -> bool:
    return any(e.shared for e in exts)
