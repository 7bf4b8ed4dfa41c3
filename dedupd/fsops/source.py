"""Reading a source as the index saw it: opened beneath its share by directory
handles, required to be the indexed inode, unchanged, before and after the read.

The consolidation's reading side (consolidate/execute.py, sortcopy.py) reads each
source whole here, writes the bytes to a staged file (fsops/copy.py) and hands it
with the very handle they were read through to the copy worker, which compares
the copy with the source re-read through that handle and checks through it,
before the copy gets its name, that the source is still that inode, unchanged
(same_inode: any write moves the ctime).
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from typing import NamedTuple

import xxhash

from dedupd import handles, testpoints
from dedupd.dedup.verify import read_upto
from dedupd.files.events import Ident
from dedupd.hashing import HEAD_SIZE

_RD = handles.FILE_FLAGS
_new_read = tuple.__new__  # a NamedTuple's own __new__ is a Python function
_NOATIME = getattr(os, "O_NOATIME", 0)


class CopyError(Exception):
    """The copy did not happen; `reason` is a short tag (vanished, changed, exists,
    mismatch, error) and nothing was left under the destination name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class SourceDirs:
    """Handles of source directories for a run of reads (the most recent KEEP): the
    files of one directory cost one resolution beneath the anchor (handles.open_dir),
    then one open of the final name relative to it, never followed (handles.open_in).
    A directory renamed or replaced after its handle was taken is still the directory
    the handle holds: the opened file must anyway be the indexed inode, unchanged
    (open_expected), so what is read is what the index scan saw in the share.
    close() when done; one thread's."""

    def __init__(self, keep: int = 1024) -> None:
        self._fds: OrderedDict[bytes, int] = OrderedDict()
        self.keep = keep

    def open(self, path: bytes, flags: int) -> int:
        # the indexed paths are normal (no trailing or doubled "/"): a partition at
        # the last "/" is os.path.split's answer at a fifth of its cost
        parent, _, name = path.rpartition(b"/")
        fd = self._fds.get(parent)
        if fd is None:
            fd = self._fds[parent] = handles.open_dir(parent or b"/")
            if len(self._fds) > self.keep:
                os.close(self._fds.popitem(last=False)[1])
        else:
            self._fds.move_to_end(parent)
        return handles.open_in(fd, name, flags)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def open_src(src: bytes, dirs: SourceDirs | None = None) -> int:
    testpoints.at("read.open", src)
    opener = handles.open_at if dirs is None else dirs.open
    try:
        try:
            return opener(src, _RD | _NOATIME)
        except PermissionError:
            return opener(src, _RD)  # O_NOATIME needs ownership; retry without it
    except FileNotFoundError:
        raise CopyError("vanished", "source disappeared before the copy") from None
    except handles.PathChanged as e:
        raise CopyError(e.reason, f"source refused: {e.strerror}") from None
    except OSError as e:
        raise CopyError("error", f"cannot open source: {e.strerror}") from None


def open_expected(src: bytes, expect: Ident | None,
                   dirs: SourceDirs | None = None) -> tuple[int, os.stat_result]:
    sfd = open_src(src, dirs)
    st = os.fstat(sfd)
    if not stat.S_ISREG(st.st_mode) or (expect is not None and not expect.matches(st)):
        os.close(sfd)
        raise CopyError("changed", "source changed since it was indexed")
    return sfd, st


class SourceRead(NamedTuple):
    """A source read whole into memory and hashed, its handle still open: it is either
    staged as a copy (its handle passed to the copy worker with it) or closed (close)."""

    src: bytes
    fd: int
    stat: os.stat_result  # the source as it was read (checked after the read)
    data: bytes
    head: int
    full: bytes

    def close(self) -> None:
        os.close(self.fd)


def read_source(src: bytes, expect: Ident | None = None,
                dirs: SourceDirs | None = None) -> SourceRead:
    """Open src (the expected inode, unchanged; through dirs' directory handles when
    given), read it whole (at most KEEP_BYTES: the caller's contract) and hash it;
    raise CopyError. The caller owns the handle."""
    sfd, st = open_expected(src, expect, dirs)
    size = st.st_size
    try:
        # one byte more than the size: a source that grew is caught here. A single
        # read that returns exactly the size is the whole file as st describes it
        # (the fstat below confirms nothing changed since): no read for the EOF.
        data = os.pread(sfd, size + 1, 0)
        if len(data) != size:
            data = read_upto(sfd, size + 1)
            if len(data) != size:
                raise CopyError("changed", "source size changed while it was read")
        now = os.fstat(sfd)  # same_inode, inline: once per file of an import
        if (now.st_ctime_ns, now.st_mtime_ns, now.st_size, now.st_ino, now.st_dev) != (
                st.st_ctime_ns, st.st_mtime_ns, size, st.st_ino, st.st_dev):
            raise CopyError("changed", "source changed while it was being copied")
    except BaseException as e:
        os.close(sfd)
        if isinstance(e, OSError):
            raise CopyError("error", f"cannot read source: {e.strerror or e}") from None
        raise
    # the head hashed in place (no copy of it); built as a tuple: a frozen dataclass's
    # __init__ costs three times as much, once per file read
    return _new_read(SourceRead, (src, sfd, st, data,
                                  xxhash.xxh3_64_intdigest(memoryview(data)[:HEAD_SIZE]),
                                  xxhash.xxh3_128_digest(data)))


def same_inode(sfd: int, st: os.stat_result) -> None:
    now = os.fstat(sfd)  # Ident's fields, compared without building two Idents
    if (now.st_dev, now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        raise CopyError("changed", "source changed while it was being copied")
