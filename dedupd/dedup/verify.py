"""Checks made right before a destructive step (they never change anything).

A hash only *finds* candidates. Before a name is replaced or removed, this
module proves, as far as a program can, that the two files are the same bytes
and may share one inode: identity re-stat (dev, ino, size, mtime_ns, ctime_ns)
-> byte compare bracketed by fstat -> metadata equality (owner, group, mode,
xattrs, POSIX ACLs) -> not open for writing (dedup/writers.py) -> kept location
writable.

Every refusal is a `Refused(reason, detail)`; reasons are short stable tags
counted as `skips_<reason>` (docs/safety.md lists them).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dedupd import handles, testpoints
from dedupd.files.events import Ident

BUF = 1 << 17  # 128 KiB: stays in cache between read and compare (1 MiB cost 2.5x)
_O_FLAGS = handles.FILE_FLAGS
_NOATIME = getattr(os, "O_NOATIME", 0)
ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")


class Refused(Exception):
    """The pair must not be linked; nothing was changed."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def refusal(e: Exception) -> Refused:
    """The refusal an error in a destructive step amounts to (its reason tag)."""
    if isinstance(e, Refused):
        return e
    if isinstance(e, handles.PathChanged):
        return Refused(e.reason, str(e))
    if isinstance(e, FileNotFoundError):
        return Refused("vanished", str(e))
    return Refused("error", str(e))


def restat(path: bytes, expected: Ident, *, ctime: bool = True,
           lstat: Callable[[bytes], os.stat_result] = handles.lstat) -> os.stat_result:
    """lstat path and insist it is still the expected, unchanged regular file.
    lstat: how the name is reached (a batch's directory handles, dirhandles.Dirs)."""
    testpoints.at("verify", path)
    try:
        st = lstat(path)
    except FileNotFoundError:
        raise Refused("vanished", os.fsdecode(path)) from None
    except handles.PathChanged as e:
        raise Refused(e.reason, f"{os.fsdecode(path)}: {e.strerror}") from None
    return check_stat(path, st, expected, ctime=ctime)


def check_stat(path: bytes, st: os.stat_result, expected: Ident, *,
               ctime: bool = True) -> os.stat_result:
    """restat's verdict on a stat already taken (through the caller's handle)."""
    if not stat.S_ISREG(st.st_mode):
        raise Refused("changed", f"{os.fsdecode(path)} is no longer a regular file")
    if not expected.matches(st, ctime=ctime):
        raise Refused("changed", f"{os.fsdecode(path)} changed since it was hashed")
    return st


def open_name(parent: handles.Parent) -> int:
    """The parent's final name opened read-only (never followed, O_NOATIME where
    permitted); Refused if it is gone or no longer a plain name."""
    try:
        try:
            return handles.open_in(parent.fd, parent.name, _O_FLAGS | _NOATIME)
        except PermissionError:
            return handles.open_in(parent.fd, parent.name, _O_FLAGS)
    except FileNotFoundError:
        raise Refused("vanished", os.fsdecode(parent.path)) from None
    except handles.PathChanged as e:
        raise Refused(e.reason, f"{os.fsdecode(parent.path)}: {e.strerror}") from None


def open_path(path: bytes) -> int:
    """Open through the path's handles (dedupd/handles.py); Refused if it moved."""
    try:
        try:
            return handles.open_at(path, _O_FLAGS | _NOATIME)
        except PermissionError:
            return handles.open_at(path, _O_FLAGS)
    except handles.PathChanged as e:
        raise Refused(e.reason, f"{os.fsdecode(path)}: {e.strerror}") from None


@dataclass(frozen=True)
class ByteCompare:
    equal: bool
    bytes_read: int
    differs_at: int | None = None  # offset of the first differing block


def same_bytes(a: bytes, a_id: Ident, b: bytes, b_id: Ident, *, ctime: bool = True) -> bool:
    """Compare two files byte for byte; Refused('changed') if either moved meanwhile."""
    return compare_bytes(a, a_id, b, b_id, ctime=ctime).equal


def compare_bytes(a: bytes, a_id: Ident | None, b: bytes, b_id: Ident | None, *,
                  ctime: bool = True) -> ByteCompare:
    """The one byte compare behind every destructive step (dedupe and consolidation).

    Each descriptor is checked before and after reading: against the expected
    identity when given (so the bytes compared are those of the files that
    were hashed), otherwise against itself at open. Raises Refused('vanished')
    or Refused('changed').
    """
    fds: list[int] = []
    try:
        ids = []
        for path, want in ((a, a_id), (b, b_id)):
            testpoints.at("verify", path)
            try:
                fds.append(open_path(path))
            except FileNotFoundError:
                raise Refused("vanished", os.fsdecode(path)) from None
            ids.append(_check_fd(fds[-1], want, path, ctime))
        fa, fb = fds
        if ids[0].size != ids[1].size:
            return ByteCompare(False, 0)
        for fd in fds:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        off = nread = 0
        size = ids[0].size
        # up to the checked size only: a user may grow a file to terabytes of holes in
        # no time; growth is caught by the checks after the read
        while off < size:
            n = min(BUF, size - off)
            da = os.pread(fa, n, off)
            db = os.pread(fb, n, off)
            nread += len(da) + len(db)
            if da != db:
                return ByteCompare(False, nread, off)
            if not da:
                break
            off += len(da)
        for fd, ident, path in zip(fds, ids, (a, b), strict=True):
            _check_fd(fd, ident, path, ctime)
        return ByteCompare(off == ids[0].size, nread)
    finally:
        for fd in fds:
            os.close(fd)


GROUP_FDS = 64  # duplicates read alongside one kept file at a time


def compare_group(a: bytes, a_id: Ident, others: Sequence[tuple[bytes, Ident]]
                  ) -> list[ByteCompare | Refused]:
    """compare_bytes of `a` with each of `others`, reading `a` once for all of them:
    one verdict per other, in order (a Refused where that file moved or vanished).

    The same descriptor checks as compare_bytes (before and after reading, against
    the given identities); Refused is raised (for all) only when `a` itself moved.
    """
    out: list[ByteCompare | Refused] = []
    for i in range(0, len(others), GROUP_FDS):
        out += _compare_some(a, a_id, others[i:i + GROUP_FDS])
    return out


def _compare_some(a: bytes, a_id: Ident, others: Sequence[tuple[bytes, Ident]]
                  ) -> list[ByteCompare | Refused]:
    out: list[ByteCompare | Refused] = []
    live: list[tuple[int, int]] = []  # (index in out, fd) still equal so far
    fa = _open_checked(a, a_id)
    try:
        for path, want in others:
            try:
                fd = _open_checked(path, want)
            except Refused as r:
                out.append(r)
                continue
            if want.size != a_id.size:
                os.close(fd)
                out.append(ByteCompare(False, 0))
                continue
            out.append(ByteCompare(True, 0))
            live.append((len(out) - 1, fd))
        _read_along(fa, a_id.size, live, out)
        _check_fd(fa, a_id, a, True)
        for i, fd in live:
            try:
                _check_fd(fd, others[i][1], others[i][0], True)
            except Refused as r:
                out[i] = r
        return out
    finally:
        os.close(fa)
        for _, fd in live:
            os.close(fd)


def _open_checked(path: bytes, want: Ident) -> int:
    testpoints.at("verify", path)
    try:
        fd = open_path(path)
    except FileNotFoundError:
        raise Refused("vanished", os.fsdecode(path)) from None
    try:
        _check_fd(fd, want, path, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_along(fa: int, size: int, live: list[tuple[int, int]],
                out: list[ByteCompare | Refused]) -> None:
    """Read fa once and every live fd along with it; a file that differs (or ends
    elsewhere) gets its verdict and leaves `live` (its fd closed)."""
    os.posix_fadvise(fa, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    off = nread = 0
    while live and off < size:  # the checked size only (as compare_bytes)
        n = min(BUF, size - off)
        da = os.pread(fa, n, off)
        nread += len(da)
        for i, fd in list(live):
            db = os.pread(fd, n, off)
            if da != db:
                out[i] = ByteCompare(False, nread + len(db), off)
                live.remove((i, fd))
                os.close(fd)
        if not da:
            break
        off += len(da)
    for i, _ in live:
        out[i] = ByteCompare(off == size, 2 * off)


def read_upto(fd: int, n: int) -> bytes:
    """Up to n bytes from offset 0 (fewer only at the end of the file), in one read
    where the filesystem allows it (callers hold the other side in memory)."""
    got = os.pread(fd, n, 0)
    if len(got) == n or not got:
        return got
    parts = [got]
    off = len(got)
    while off < n:
        b = os.pread(fd, n - off, off)
        if not b:
            break
        parts.append(b)
        off += len(b)
    return b"".join(parts)


def first_difference(a: bytes, b: bytes) -> int:
    """Offset of the first byte where a and b differ (len of the shorter if a prefix)."""
    n = min(len(a), len(b))
    lo = 0
    while lo < n and a[lo:lo + BUF] == b[lo:lo + BUF]:
        lo += BUF
    return next((i for i in range(lo, min(lo + BUF, n)) if a[i] != b[i]), n)


def compare_with_bytes(path: bytes, want: Ident, data: bytes) -> ByteCompare:
    """Compare a file with bytes held in memory (content just verified elsewhere, e.g. a
    copy's source as read back from the archive), bracketed by fstat checks against
    `want` as compare_bytes does: the file is read once instead of twice."""
    fd = _open_checked(path, want)
    try:
        if want.size != len(data):
            return ByteCompare(False, 0)
        got = read_upto(fd, len(data) + 1)  # one byte more: a longer file differs too
        if got != data:
            return ByteCompare(False, len(got), first_difference(got, data))
        _check_fd(fd, want, path, True)
        return ByteCompare(True, len(got))
    finally:
        os.close(fd)


def _check_fd(fd: int, want: Ident | None, path: bytes, ctime: bool) -> Ident:
    """The descriptor's identity; Refused('changed') unless it is `want` (when given)."""
    st = os.fstat(fd)
    if want is not None and not want.matches(st, ctime=ctime):
        raise Refused("changed", f"{os.fsdecode(path)} changed since it was hashed")
    return want if want is not None else Ident.of(st)


def xattrs(path: bytes) -> dict[str, bytes]:
    """All extended attributes of path (ACLs included); {} where unsupported.

    Read through a descriptor opened by handle, so a swapped name is refused."""
    fd = open_path(path)
    try:
        return xattrs_fd(fd)
    finally:
        os.close(fd)


def xattrs_fd(fd: int) -> dict[str, bytes]:
    """All extended attributes of an open file (ACLs included); {} where unsupported."""
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            return {}
        raise
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(fd, n)
        except OSError as e:
            if e.errno != errno.ENODATA:  # removed meanwhile: treat as absent
                raise
    return out


def check_metadata(keep: bytes, kst: os.stat_result, dup: bytes,
                   dst: os.stat_result) -> None:
    """Refuse unless owner, group, mode, xattrs and ACLs are identical.

    Linking makes both names share the kept inode's metadata, so any
    difference here would silently change who may read or write the duplicate.
    """
    same_metadata(kst, lambda: xattrs(keep), dst, lambda: xattrs(dup))


def same_metadata(kst: os.stat_result, kx: Callable[[], dict[str, bytes]],
                  dst: os.stat_result, dx: Callable[[], dict[str, bytes]]) -> None:
    """check_metadata on stats already taken; kx/dx read each side's xattrs (only
    once owner, group and mode agree)."""
    if kst.st_uid != dst.st_uid:
        raise Refused("owner_differs", f"uid {kst.st_uid} != {dst.st_uid}")
    if kst.st_gid != dst.st_gid:
        raise Refused("group_differs", f"gid {kst.st_gid} != {dst.st_gid}")
    if stat.S_IMODE(kst.st_mode) != stat.S_IMODE(dst.st_mode):
        raise Refused("mode_differs", f"{stat.S_IMODE(kst.st_mode):o} != "
                      f"{stat.S_IMODE(dst.st_mode):o}")
    xa, xb = kx(), dx()
    if xa != xb:
        names = {n for n in set(xa) | set(xb) if xa.get(n) != xb.get(n)}
        reason = "acl_differs" if names & set(ACL_XATTRS) else "xattr_differs"
        raise Refused(reason, ", ".join(sorted(names)))


def readonly(path: bytes) -> bool:
    """True when path lies on a read-only mount or inside a ZFS/BTRFS-style snapshot."""
    if b"/.zfs/snapshot/" in path:
        return True
    try:
        with handles.Parent(path) as p:
            return bool(os.fstatvfs(p.fd).f_flag & os.ST_RDONLY)
    except OSError:
        return True


def under(path: bytes, roots: tuple[bytes, ...]) -> bool:
    """path equals or lies below one of roots (byte paths, no trailing slash needed)."""
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)
