"""Byte-for-byte comparison of two files that must still be what the index says.

Hashes only find candidates; before provenance is recorded (and before a source
is pruned) the bytes are compared, each file bracketed by fstat checks so a file
that moves while we read it is never called equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from dedupd.dedup.verify import ByteCompare, Refused, compare_bytes, compare_with_bytes
from dedupd.files.events import Ident, Problem
from dedupd.hashing.read import FileChanged, read_hashes
from dedupd.index.store import HashUpdate, IndexedFile


@dataclass(frozen=True)
class Compared:
    equal: bool
    bytes_read: int
    problem: tuple[str, str] | None = None  # (reason, detail) when not comparable


def same_bytes(a: bytes, ida: Ident | None, b: bytes, idb: Ident | None) -> Compared:
    """Compare a and b; each must match its identity (when given) before and after."""
    try:
        return _result(compare_bytes(a, ida, b, idb))
    except Refused as e:
        return Compared(False, 0, (e.reason, e.detail))
    except OSError as e:
        return Compared(False, 0, ("error", e.strerror or str(e)))


def same_as_data(a: bytes, ida: Ident, data: bytes) -> Compared:
    """Compare a (which must stay `ida`) with bytes in memory: the content of an
    archive copy that was just verified against its source (read once, not twice)."""
    try:
        return _result(compare_with_bytes(a, ida, data))
    except Refused as e:
        return Compared(False, 0, (e.reason, e.detail))
    except OSError as e:
        return Compared(False, 0, ("error", e.strerror or str(e)))


def hash_archived(f: IndexedFile, path: bytes) -> HashUpdate | Problem:
    """The whole hash of archive file f, read at path (which must stay f's identity),
    as an update checked against the stat it was read at; else why not. For an
    archive file no pass hashed (an inode of a size met once, such as a source file
    hardlinked into the archive), before provenance names its content."""
    try:
        got = read_hashes(f._replace(paths=(path,)), True)
    except FileChanged as e:
        return Problem(path, "changed", str(e) or "changed since it was indexed")
    except FileNotFoundError:
        return Problem(path, "vanished", "disappeared before it was read")
    except OSError as e:
        return Problem(path, "error", e.strerror or str(e))
    return HashUpdate(f.dev, f.ino, got.head, got.full, (f.size, f.mtime_ns, f.ctime_ns))


def _result(res: ByteCompare) -> Compared:
    if res.differs_at is not None:
        return Compared(False, res.bytes_read, ("differs", f"content differs at byte "
                                                f"{res.differs_at} despite equal hashes "
                                                "(hash collision?)"))
    if not res.equal:
        return Compared(False, res.bytes_read, ("differs", "sizes differ"))
    return Compared(True, res.bytes_read)
