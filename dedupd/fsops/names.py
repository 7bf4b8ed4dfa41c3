"""Moving a name without replacing another (fsops' renameat2 gateway) and holding a
name: the primitives under fsops.swap's swaps and fsops.link's removals.

renameat2 is reached through libc by ctypes; RENAME_EXCHANGE and RENAME_NOREPLACE
are missing on some filesystems (zfs-fuse, NFS: no flag at all; SMB: no exchange),
so each caller is told "unsupported" (None) and falls back (a link where a rename
could replace something). A *hold* moves whatever a name holds at one instant to a
name of ours, to be checked there and then removed or given back (put_back: never
over a name made meanwhile).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Any

from dedupd import handles, testpoints

RENAME_NOREPLACE = 1  # linux/fs.h
RENAME_EXCHANGE = 2

def renameat2() -> Any:
    """libc's renameat2, or None where it is missing or the test hook
    DEDUPD_TEST_NO_EXCHANGE=1 forces the rename fallback without any renameat2 flag
    (never set in production; =noreplace refuses RENAME_EXCHANGE only: exchange_in)."""
    if os.environ.get("DEDUPD_TEST_NO_EXCHANGE", "noreplace") not in ("", "noreplace"):
        return None  # test-only: exercise the rename path as on NFS or zfs-fuse
    return getattr(handles.LIBC, "renameat2", None)


def exchange_in(fn: Any, pa: handles.Parent, pb: handles.Parent) -> bool:
    """renameat2(pa, pb, RENAME_EXCHANGE) with fn (renameat2()); False where the
    filesystem cannot exchange (or DEDUPD_TEST_NO_EXCHANGE says so), else OSError."""
    if os.environ.get("DEDUPD_TEST_NO_EXCHANGE"):  # test-only: as on SMB (NOREPLACE only)
        return False
    return flagged(fn, pa, pb, RENAME_EXCHANGE) is not None


def flagged(fn: Any, pa: handles.Parent, pb: handles.Parent, flag: int) -> bool | None:
    """renameat2(pa, pb, flag): True if done, False if pb exists (NOREPLACE), None
    where the filesystem cannot (EINVAL: FUSE without rename2, NFS); else OSError."""
    return _flagged_at(fn, pa.fd, pa.name, pb.fd, pb.name, flag, pa.path)


def _flagged_at(fn: Any, sfd: int, sname: bytes, dfd: int, dname: bytes, flag: int,
                shown: bytes) -> bool | None:
    if fn(sfd, sname, dfd, dname, flag) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return None
    if err == errno.EEXIST and flag == RENAME_NOREPLACE:
        return False
    raise OSError(err, os.strerror(err), os.fsdecode(shown))


def rename_noreplace(pa: handles.Parent, pb: handles.Parent) -> bool | None:
    """pa's name moved to pb's only if pb's name does not exist (RENAME_NOREPLACE):
    True if moved, False if pb exists, None where the flag is unsupported."""
    fn = renameat2()
    return None if fn is None else flagged(fn, pa, pb, RENAME_NOREPLACE)


def rename_noreplace_at(sfd: int, sname: bytes, dfd: int, dname: bytes) -> bool | None:
    """rename_noreplace on raw directory fds and names (fsops.copy's temp copies)."""
    fn = renameat2()
    return None if fn is None else _flagged_at(fn, sfd, sname, dfd, dname,
                                               RENAME_NOREPLACE, sname)


def hold_in(p: handles.Parent, h: handles.Parent) -> os.stat_result:
    """p's entry moved to h's name, whatever p's name holds at that instant; h's
    lstat. Where RENAME_NOREPLACE works a file at h's name is never replaced
    (FileExistsError)."""
    moved = rename_noreplace(p, h)
    if moved is False:
        raise FileExistsError(errno.EEXIST, "hold name taken", os.fsdecode(h.path))
    if moved is None:
        os.rename(p.name, h.name, src_dir_fd=p.fd, dst_dir_fd=h.fd)
    return h.lstat()


def put_back(h: handles.Parent, p: handles.Parent) -> bool:
    """h's entry moved to p's name, never over a name that exists (RENAME_NOREPLACE,
    else link then unlink): True if moved, False if it stays under h (p's name exists,
    or h is gone)."""
    try:
        moved = rename_noreplace(h, p)
    except FileNotFoundError:
        return False
    if moved is not None:
        return moved
    try:
        os.link(h.name, p.name, src_dir_fd=h.fd, dst_dir_fd=p.fd, follow_symlinks=False)
    except PermissionError:  # a directory cannot be linked
        return _put_back_dir(h, p)
    except OSError:  # EEXIST, or gone: nothing is removed
        return False
    os.unlink(h.name, dir_fd=h.fd)
    return True


def _put_back_dir(h: handles.Parent, p: handles.Parent) -> bool:
    """A held directory back without RENAME_NOREPLACE: a plain rename, which cannot
    replace a file (ENOTDIR) nor a directory with entries (ENOTEMPTY); at most an
    empty directory made at p's name meanwhile."""
    try:
        if not stat.S_ISDIR(h.lstat().st_mode):
            return False
        os.rename(h.name, p.name, src_dir_fd=h.fd, dst_dir_fd=p.fd)
    except OSError:
        return False
    return True


def give_back(hold: bytes, name: bytes) -> bool:
    """The entry under `hold` back under `name` (same directory), never over a name
    that exists; True if moved (recovery of an op stopped while its name was held)."""
    testpoints.at("mutate", name)
    try:
        p = handles.Parent(name)
    except (FileNotFoundError, handles.PathChanged):
        return False
    with p:
        return put_back(p.sibling(hold), p)
