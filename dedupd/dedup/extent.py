"""Extent dedupe backends: FIDEDUPERANGE through fcntl.ioctl, or duperemove --fdupes.

The kernel locks both ranges and compares them byte for byte before sharing
them, so content that differs is never merged whatever the index believed.
Destinations are passed as open file descriptors (ioctl) or on stdin
(duperemove), never on a command line, so no group is too large for argv.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dedupd import handles, proc, testpoints

FIDEDUPERANGE = 0xC0189436  # _IOWR(0x94, 54, struct file_dedupe_range)
SAME, DIFFERS = 0, 1
KERNEL_MAX_DESTS = 120  # larger requests may fail with ENOMEM in kmalloc'd arrays
CHUNK = 16 * 1024 * 1024  # btrfs dedupes at most 16 MiB per call internally
# The kernel's byte compare reads pages one by one without readahead: on a cold
# cache that is ~5x slower than reading ahead. Every call's ranges (and the
# next call's) are handed to readahead first, within this many bytes per call.
PREFETCH_BUDGET = 256 * 1024 * 1024
MIN_CALL = 1024 * 1024
_RANGE = struct.Struct("=QQHHI")  # struct file_dedupe_range (24 bytes)
_INFO = struct.Struct("=qQQiI")  # struct file_dedupe_range_info (32 bytes)


@dataclass(frozen=True)
class DestResult:
    """What happened to one destination: ok, differs or error (with errno text)."""

    fd: int
    status: str
    bytes_deduped: int = 0
    detail: str = ""


def dedupe_fds(src_fd: int, size: int, dest_fds: Sequence[int]) -> list[DestResult]:
    """Share bytes [0, size) of src_fd into every destination fd (at most 120).

    A destination whose content differs anywhere stops at the first differing
    chunk and is reported as 'differs'; what was shared before that point was
    byte-identical, so no content changes either way.
    """
    if len(dest_fds) > KERNEL_MAX_DESTS:
        raise ValueError(f"at most {KERNEL_MAX_DESTS} destinations per call")
    done = dict.fromkeys(dest_fds, 0)
    state = {fd: "ok" for fd in dest_fds}
    detail: dict[int, str] = {}
    off = 0
    # Fewer bytes per call for many destinations, so one call's ranges fit the budget.
    step = max(MIN_CALL, min(CHUNK, PREFETCH_BUDGET // (len(dest_fds) + 1)))
    while off < size:
        live = [fd for fd in dest_fds if state[fd] == "ok" and done[fd] == off]
        if not live:
            break
        length = min(step, size - off)
        if off == 0:
            prefetch([src_fd, *live], 0, length)
        if off + length < size:  # read the next range while this call compares
            prefetch([src_fd, *live], off + length, step)
        for fd, st, n in _call(src_fd, off, length, live):
            if st == SAME and n > 0:
                done[fd] += n
            elif st == DIFFERS:
                state[fd] = "differs"
            elif st < 0:
                state[fd], detail[fd] = "error", os.strerror(-st)
            else:
                state[fd], detail[fd] = "error", "kernel deduped 0 bytes"
        off += length
    out = []
    for fd in dest_fds:
        status = state[fd] if state[fd] != "ok" or done[fd] >= size else "error"
        out.append(DestResult(fd, status, done[fd], detail.get(fd, "")))
    return out


def prefetch(fds: Sequence[int], offset: int, length: int) -> None:
    """Start asynchronous readahead of [offset, offset+length) of every fd (a hint:
    errors are ignored, nothing waits for the data)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)


def _call(src_fd: int, off: int, length: int,
          dests: Sequence[int]) -> list[tuple[int, int, int]]:
    """One FIDEDUPERANGE; repeats for a destination the kernel only partly did."""
    buf = bytearray(_RANGE.size + _INFO.size * len(dests))
    _RANGE.pack_into(buf, 0, off, length, len(dests), 0, 0)
    for k, fd in enumerate(dests):
        _INFO.pack_into(buf, _RANGE.size + k * _INFO.size, fd, off, 0, 0, 0)
    fcntl.ioctl(src_fd, FIDEDUPERANGE, buf, True)
    res = []
    for k, fd in enumerate(dests):
        _fd, _off, n, st, _r = _INFO.unpack_from(buf, _RANGE.size + k * _INFO.size)
        if st == SAME and 0 < n < length:
            more = _call(src_fd, off + n, length - n, [fd])[0]
            n = n + more[2] if more[1] == SAME else n
            st = more[1]
        res.append((fd, st, n))
    return res


def open_dest(path: bytes) -> int:
    """Open a destination: read-write when allowed, else read-only.

    Root may dedupe into a file it opened read-only (CAP_SYS_ADMIN). EROFS is
    never worked around: a read-only snapshot or mount is not a destination.
    """
    testpoints.at("mutate", path)
    flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0)
    try:
        return handles.open_at(path, os.O_RDWR | flags)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.ETXTBSY):
            raise
    return handles.open_at(path, os.O_RDONLY | flags)


def duperemove(groups: Sequence[Sequence[bytes]], timeout: float = 3600.0) -> proc.Result:
    """Dedupe groups with `duperemove --fdupes`, fed on stdin (first path = reference).

    Groups whose paths contain a newline cannot be written in the fdupes
    format; callers route those to the ioctl backend.
    """
    lines = bytearray()
    for g in groups:
        if any(b"\n" in p for p in g):
            raise ValueError("a path with a newline cannot go through --fdupes")
        for p in g:
            lines += p + b"\n"
        lines += b"\n"
    # -b 4096: duperemove silently skips files smaller than its block size
    # (128 KiB by default), even in --fdupes mode where it dedupes whole files.
    return proc.run(["duperemove", "--fdupes", "-q", "-b", "4096"], input=bytes(lines),
                    timeout=timeout)
