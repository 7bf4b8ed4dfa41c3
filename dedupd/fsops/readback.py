"""Comparing a copy read back from the disk with the source, byte for byte.

A verified copy (fsops/copy.py) gets its name only after what reached the disk
equals the source: compare_kept against the source bytes kept from the copy
(read once), compare_with_source against the source re-read side by side.
"""

from __future__ import annotations

import os
import threading

from dedupd.dedup.verify import first_difference
from dedupd.fsops.source import CopyError, same_inode

BUF = 1 << 20


_tls = threading.local()


def _readback_buffer(n: int) -> bytearray:
    """This thread's buffer for reading copies back, at least n bytes: reused, so a
    read-back costs no fresh pages (a new bytes per copy faulted in 60,000 pages for
    250 MB of copies)."""
    buf: bytearray | None = getattr(_tls, "buf", None)
    if buf is None or len(buf) < n:
        buf = _tls.buf = bytearray(max(n, BUF))
    return buf


def compare_kept(kept: bytes | memoryview, tfd: int) -> None:
    """Compare the copy as read back with the source bytes kept from the copy, byte for
    byte: read into a reused buffer, compared with bytearray.startswith (one memcmp
    over the buffers, no copy of either; comparing memoryviews goes byte by byte)."""
    n = len(kept)
    buf = _readback_buffer(n + 1)
    with memoryview(buf) as view:
        got = 0
        while got <= n:  # one byte more than the source: a longer copy differs too
            k = os.preadv(tfd, [view[got:n + 1]], got)
            if not k:
                break
            got += k
    if got == n and buf.startswith(kept):
        return
    if got > n:
        raise CopyError("mismatch", "copy is longer than the source")
    at = first_difference(bytes(buf[:got]), bytes(kept))
    raise CopyError("mismatch", f"copy differs from source at byte {at}")


def compare_with_source(sfd: int, tfd: int, st: os.stat_result) -> int:
    """Compare the written copy with the source byte for byte; return source bytes read.
    A source changed since st was taken is "changed" (checked first: else it would be
    a mismatch), and one changed during the compare too."""
    same_inode(sfd, st)
    off = 0
    while off < st.st_size:
        a = os.pread(sfd, BUF, off)
        b = os.pread(tfd, BUF, off)
        if not a or a != b:
            raise CopyError("mismatch", f"copy differs from source at byte {off}")
        off += len(a)
    if os.pread(tfd, 1, off):
        raise CopyError("mismatch", "copy is longer than the source")
    same_inode(sfd, st)
    return off
