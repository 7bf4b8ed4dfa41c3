"""Mutation primitives of the hardlink and cross-drive dedup paths.

Every function here changes the filesystem in one small, crash-safe step and
makes it durable (fsync of the directory that changed) before returning, so
the journal never records a step the disk could still forget. Callers record
the intent in the journal *before* calling, and the next state after.

None of these functions ever removes the last name of some content on its own:
`rename_over` replaces a name atomically, `unlink_name` refuses unless the
caller proved another copy exists (that is the caller's contract, not checked
here), and `link_exact` never overwrites (EEXIST).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
import stat
from collections.abc import Sequence

TEMP_PREFIX = b".dedupd-tmp-"
QUARANTINE_SUFFIX = b".dedupd-q"
_RENAME_EXCHANGE = 2  # linux/fs.h

_libc: ctypes.CDLL | None = None


def temp_name(target: bytes) -> bytes:
    """A fresh hidden name in target's directory, e.g. `dir/.dedupd-tmp-<hex>`."""
    d = os.path.dirname(target) or b"."
    return os.path.join(d, TEMP_PREFIX + secrets.token_hex(8).encode())


def is_temp_name(path: bytes) -> bool:
    return os.path.basename(path).startswith(TEMP_PREFIX)


def fsync_dir(path: bytes) -> None:
    """Make a directory's entries durable (a link, rename or unlink inside it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some FUSE filesystems do not implement fsync on directories.
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _parent(path: bytes) -> bytes:
    return os.path.dirname(path) or b"."


def link_exact(src: bytes, dst: bytes, *, durable: bool = True) -> None:
    """Hardlink src at the new name dst; raises FileExistsError if dst exists.

    Never overwrites: a name that appeared meanwhile is left alone. durable=False
    skips the directory fsync: for a temporary name whose directory the very
    next step (the swap) fsyncs anyway, and whose loss in a crash costs nothing.
    """
    os.link(src, dst, follow_symlinks=False)
    if durable:
        fsync_dir(_parent(dst))


def rename_over(src: bytes, dst: bytes) -> None:
    """Atomically replace the name dst by src (same directory or filesystem)."""
    os.rename(src, dst)
    fsync_dir(_parent(dst))
    if _parent(src) != _parent(dst):
        fsync_dir(_parent(src))


def exchange(a: bytes, b: bytes) -> bool:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE).

    Returns False when the filesystem or libc cannot do it (the caller falls
    back to rename_over); raises OSError for any other failure. Test hook:
    DEDUPD_TEST_NO_EXCHANGE=1 forces the fallback (never set in production).
    """
    global _libc
    if os.environ.get("DEDUPD_TEST_NO_EXCHANGE"):  # test-only: exercise the rename path
        return False
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, a, at_fdcwd, b, _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(err, os.strerror(err), os.fsdecode(a))
    fsync_dir(_parent(b))
    if _parent(a) != _parent(b):
        fsync_dir(_parent(a))
    return True


def unlink_name(path: bytes) -> None:
    """Remove one name. The caller guarantees the content lives on elsewhere."""
    os.unlink(path)
    fsync_dir(_parent(path))


def unlink_if_inode(path: bytes, dev: int, ino: int) -> bool:
    """Remove path only if it still names inode (dev, ino); True if removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if (st.st_dev, st.st_ino) != (dev, ino) or not stat.S_ISREG(st.st_mode):
        return False
    unlink_name(path)
    return True


def purge_quarantine(qdir: bytes, max_age_seconds: float, now: float) -> int:
    """Remove quarantined copies older than max_age_seconds; returns how many.

    Only names this module's callers made (suffix QUARANTINE_SUFFIX) are touched.
    """
    removed = 0
    try:
        entries = os.listdir(qdir)
    except FileNotFoundError:
        return 0
    for name in entries:
        if not name.endswith(QUARANTINE_SUFFIX):
            continue
        p = os.path.join(qdir, name)
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and now - st.st_ctime > max_age_seconds:
            os.unlink(p)
            removed += 1
    if removed:
        fsync_dir(qdir)
    return removed


def mkdirs_like(root: bytes, rel_dirs: bytes, template_root: bytes) -> list[bytes]:
    """Create root/rel_dirs, each new level with owner and mode of template_root/<level>.

    Returns the directories created (outermost first) so a rollback can remove
    them if they are still empty. Existing directories are left as they are.
    """
    created: list[bytes] = []
    cur, tcur = root, template_root
    for part in [p for p in rel_dirs.split(b"/") if p]:
        cur, tcur = os.path.join(cur, part), os.path.join(tcur, part)
        if os.path.isdir(cur):
            continue
        tst = os.lstat(tcur)
        os.mkdir(cur, 0o700)  # tight until owner and mode are copied
        os.chown(cur, tst.st_uid, tst.st_gid, follow_symlinks=False)
        os.chmod(cur, stat.S_IMODE(tst.st_mode))
        os.utime(cur, ns=(tst.st_atime_ns, tst.st_mtime_ns))
        fsync_dir(_parent(cur))
        created.append(cur)
    return created


def rmdirs_if_empty(dirs: Sequence[bytes]) -> None:
    """Remove directories created by mkdirs_like (innermost first) while empty."""
    for d in reversed(list(dirs)):
        try:
            os.rmdir(d)
        except OSError:
            return
        fsync_dir(_parent(d))
