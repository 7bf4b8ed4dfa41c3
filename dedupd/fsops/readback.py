"""Comparing a copy read back from the disk with the source, byte for byte.

A verified copy (fsops/copy.py) gets its name only after what reached the disk
equals the source: compare_kept against the source bytes kept from the copy
(read once), compare_with_source against the source re-read side by side.
"""

from __future__ import annotations

import os
import threading
from typing import NoReturn

import xxhash

from dedupd.dedup.verify import first_difference
from dedupd.fsops.source import CopyError, same_inode

BUF = 1 << 20


_tls = threading.local()


def _readback_buffer(n: int, which: str = "buf") -> bytearray:
    """This thread's buffer for reading copies back (or, "src", their sources), at
    least n bytes: reused, so a read-back costs no fresh pages (a new bytes per copy
    faulted in 60,000 pages for 250 MB of copies)."""
    buf: bytearray | None = getattr(_tls, which, None)
    if buf is None or len(buf) < n:
        buf = bytearray(max(n, BUF + 1))
        setattr(_tls, which, buf)
    return buf


def _read_at(fd: int, view: memoryview, off: int) -> int:
    """Fill view from fd at off: the bytes read (fewer only at the end of the file)."""
    got = 0
    while got < len(view):
        k = os.preadv(fd, [view[got:]], off + got)
        if not k:
            break
        got += k
    return got


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


def compare_with_source(sfd: int, tfd: int, st: os.stat_result, full: bytes,
                        named: bool) -> int:
    """Compare the written copy with the source byte for byte; return source bytes read.
    A source changed since st was taken is "changed", checked once, after the compare
    (a write moves the ctime): a difference found meanwhile checks it first
    (_differs, which also tells a source rewritten with no ctime moved from a bad
    copy by full, the hash of the bytes the copy was written from). A copy with no
    name is not hashed here: it was written from the very bytes full was taken of
    and nobody else can reach it, so a copy equal to the source re-read is those
    bytes unless the source changed since its read -- which makes it differ from the
    copy, or moves its ctime. A copy with a temp name (named: no O_TMPFILE there) has
    its source's owner and mode already, so that owner may rewrite it and the source
    alike (the source through a dirty memory map, with no ctime moved): its
    XXH3-128 must be full. Both are read a buffer at a time into this thread's two
    reused buffers, compared with one memcmp each."""
    n = st.st_size
    a, b = _readback_buffer(BUF, "src"), _readback_buffer(BUF + 1)
    h = xxhash.xxh3_128() if named else None
    with memoryview(a) as va, memoryview(b) as vb:
        off = 0
        while True:
            k = min(BUF, n - off)
            last = off + k >= n
            # the copy's last buffer one byte longer: a longer copy differs too
            got = _read_at(tfd, vb[:k + 1] if last else vb[:k], off)
            if _read_at(sfd, va[:k], off) != k or got != k or not a.startswith(vb[:k]):
                _differs(sfd, tfd, st, full, "copy is longer than the source" if got > k
                         else f"copy differs from source at byte {off}")
            if h is not None:
                h.update(vb[:k])
            off += k
            if last:
                break
    if h is not None and h.digest() != full:  # equal to the source, not to what was read
        _differs(sfd, tfd, st, full, "copy differs from the bytes it was written from")
    same_inode(sfd, st)
    return off


def _differs(sfd: int, tfd: int, st: os.stat_result, full: bytes, detail: str) -> NoReturn:
    """A copy that differs from its source re-read: "changed" when the source is to
    blame -- its ctime moved during the compare, or the copy read back is still the
    bytes it was written from (full) while the source's bytes changed with no ctime
    moved (written through a memory map whose pages were dirty already: no fault, no
    timestamp) --; else "mismatch" (what reached the disk is not what was written)."""
    same_inode(sfd, st)
    h = xxhash.xxh3_128()
    off = 0
    while chunk := os.pread(tfd, BUF, off):
        h.update(chunk)
        off += len(chunk)
    if h.digest() == full:
        raise CopyError("changed", "source changed while it was being copied (its bytes, "
                        "not its ctime)")
    raise CopyError("mismatch", detail)
