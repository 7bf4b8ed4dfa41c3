"""Byte-for-byte comparison of two files that must still be what the index says.

Hashes only find candidates; before provenance is recorded (and before a source
is pruned) the bytes are compared, each file bracketed by fstat checks so a file
that moves while we read it is never called equal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dedupd.scan.events import Ident

BUF = 1 << 20
_RD = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Compared:
    equal: bool
    bytes_read: int
    problem: tuple[str, str] | None = None  # (reason, detail) when not comparable


def _open(path: bytes, want: Ident | None) -> int:
    fd = os.open(path, _RD)
    if want is not None and Ident.of(os.fstat(fd)) != want:
        os.close(fd)
        raise _Changed(path)
    return fd


class _Changed(Exception):
    pass


def same_bytes(a: bytes, ida: Ident | None, b: bytes, idb: Ident | None) -> Compared:
    """Compare a and b; each must match its identity (when given) before and after."""
    fa = fb = -1
    nread = 0
    try:
        fa = _open(a, ida)
        fb = _open(b, idb)
        sa, sb = os.fstat(fa), os.fstat(fb)
        if sa.st_size != sb.st_size:
            return Compared(False, 0, ("differs", "sizes differ"))
        os.posix_fadvise(fa, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        os.posix_fadvise(fb, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        off = 0
        while True:
            x, y = os.pread(fa, BUF, off), os.pread(fb, BUF, off)
            nread += len(x) + len(y)
            if x != y:
                return Compared(False, nread, ("differs", f"content differs at byte {off} "
                                               "despite equal hashes (hash collision?)"))
            if not x:
                break
            off += len(x)
        if Ident.of(os.fstat(fa)) != Ident.of(sa) or Ident.of(
                os.fstat(fb)) != Ident.of(sb):
            return Compared(False, nread, ("changed", "changed while being compared"))
        return Compared(True, nread)
    except _Changed as e:
        return Compared(False, nread, ("changed", f"{os.fsdecode(e.args[0])} changed "
                                       "since it was indexed"))
    except FileNotFoundError:
        return Compared(False, nread, ("vanished", "disappeared before the compare"))
    except OSError as e:
        return Compared(False, nread, ("error", e.strerror or str(e)))
    finally:
        for fd in (fa, fb):
            if fd >= 0:
                os.close(fd)
