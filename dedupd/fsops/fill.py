"""Filling a staged copy (fsops/copy.py): the source's bytes, read and hashed as they
are written (holes kept), and the source's metadata."""

from __future__ import annotations

import contextlib
import os
import stat

import xxhash

from dedupd.fsops.readback import BUF
from dedupd.fsops.source import CopyError, same_inode
from dedupd.hashing import HEAD_SIZE

KEEP_BYTES = 16 << 20  # a source up to this size stays in memory, as read (the read-back)
_EUID = os.geteuid()  # whether copies may take the source's owner (root only)
_EGID = os.getegid()  # a copy's group, with _EUID (dedupd never changes either)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """data to the fresh file fd, its runs of zeros left as holes (write_sparse)."""
    if 0 < len(data) <= BUF:  # most sources: their one buffer, the last (write_sparse's)
        n = os.write(fd, data)
        if n < len(data):
            write_sparse(fd, memoryview(data)[n:], True)
        return
    view = memoryview(data)
    for off in range(0, len(view), BUF):
        write_sparse(fd, view[off:off + BUF], off + BUF >= len(view))


# A user of a share makes a file of any apparent size in no space (truncate -s 16T);
# written out as zeros its copy would fill the archive's disk, run as root without a
# quota. A whole buffer of zeros is left as a hole (read back, it is zeros again).
_ZEROS = bytes(BUF)


def write_sparse(fd: int, chunk: bytes | memoryview, last: bool) -> None:
    """Write one chunk at fd's offset: skipped (a hole) when it is BUF zero bytes and
    not the file's last (written, it sets the size: no ftruncate, which FUSE's fusefat
    refuses)."""
    if not last and len(chunk) == BUF and chunk == _ZEROS:
        os.lseek(fd, BUF, os.SEEK_CUR)
        return
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view):]


def write_copy(sfd: int, tfd: int, st: os.stat_result
                ) -> tuple[int, bytes, int, bytes | None]:
    """Copy sfd to tfd; (head hash, full hash, bytes read, the bytes when kept)."""
    if st.st_size > BUF:
        os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    h = xxhash.xxh3_128()
    keep: list[bytes] | None = [] if st.st_size <= KEEP_BYTES else None
    head_buf = b""
    total = 0
    # Up to one byte more than the size: a source that grew is caught here, not at the
    # verify, and never read further (a user grows a file to terabytes of holes at once).
    while total <= st.st_size:
        data = os.read(sfd, min(st.st_size + 1 - total, BUF))
        if not data:
            break
        if len(head_buf) < HEAD_SIZE:
            head_buf += data[: HEAD_SIZE - len(head_buf)]
        h.update(data)
        if keep is not None:
            keep.append(data)
            if total + len(data) > KEEP_BYTES:
                keep = None
        write_sparse(tfd, data, total + len(data) >= st.st_size)
        total += len(data)
    same_inode(sfd, st)
    if total != st.st_size:
        raise CopyError("changed", "source size changed during the copy")
    kept = None if keep is None else (keep[0] if len(keep) == 1 else b"".join(keep))
    return xxhash.xxh3_64_intdigest(head_buf), h.digest(), total, kept


def set_meta(tfd: int, st: os.stat_result) -> None:
    """Mode, owner (root only; a failure is not an error) and atime/mtime of the source.
    A copy that could not take the source's owner loses setuid/setgid (as cp -p does):
    else a user's setuid program would be one of ours."""
    mode = stat.S_IMODE(st.st_mode)
    owned = st.st_uid == _EUID and st.st_gid == _EGID  # made ours: theirs already
    if _EUID == 0 and not owned:
        # A uid the archive filesystem cannot store (or no CAP_CHOWN) is not an error
        with contextlib.suppress(OSError):
            os.fchown(tfd, st.st_uid, st.st_gid)
            owned = True
    if not owned:
        mode &= ~(stat.S_ISUID | stat.S_ISGID)
    with contextlib.suppress(OSError):  # filesystems without POSIX modes (some SMB mounts)
        os.fchmod(tfd, mode)
    os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))
