"""Verified copy into a directory that never leaves a partial file under a real name.

Contract of `copy_verified(src, dest)`:

1. open the source (no symlinks followed) and check it is the expected inode,
   unchanged (dev, ino, size, mtime_ns, ctime_ns);
2. write it to `.dedupd-copy.<random>.tmp` in dest's directory, hashing what
   was read (XXH3-64 head + XXH3-128 whole);
3. set mode, owner (when we may) and mtime, then fsync the temp file;
4. re-read the temp file and the source side by side and compare every byte;
   the source must still be unchanged;
5. put it in place without clobbering: `link(tmp, dest)` fails if dest exists
   (a plain `rename` would silently replace a file someone else put there);
   then unlink tmp and fsync the directory. Filesystems without hardlinks fall
   back to check-then-rename.

A crash at any point leaves at most a temp file (which `remove_stale_temps`
deletes on the next run) and never a half-written file under `dest`.

Batches: `stage_copy` does steps 1-2 and the metadata of 3 for one file;
`sync_filesystem` then makes a whole batch durable with one syncfs(2) (an
fsync per small file costs a journal commit each: 2-3 ms on the test VM, most
of an import's time); `place_copy` does steps 4-5. The order per file stays
write -> durable -> compare -> link, so no name ever shows undurable data.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

from dedupd import handles, testpoints
from dedupd.files.events import Ident
from dedupd.fsops import link as link_ops
from dedupd.fsops.link import fsync_dir
from dedupd.hashing import HEAD_SIZE

TMP_PREFIX = b".dedupd-copy."
TMP_SUFFIX = b".tmp"
TMP_GLOB = ".dedupd-copy.*.tmp"
BUF = 1 << 20
_RD = handles.FILE_FLAGS
_NOATIME = getattr(os, "O_NOATIME", 0)
# Errors from link() that mean "this filesystem has no hardlinks", not "dest exists".
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)

Step = Callable[[str], None]


class CopyError(Exception):
    """The copy did not happen; `reason` is a short tag (vanished, changed, exists,
    mismatch, error) and nothing was left under the destination name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class CopyResult:
    dest: bytes
    head: int  # XXH3-64 of the first HEAD_SIZE bytes (the index's head hash)
    full: bytes  # XXH3-128 of the whole content
    dest_stat: os.stat_result
    bytes_read: int  # source bytes read (copy + compare passes)
    bytes_written: int


def _noop(_step: str) -> None:
    return None


@dataclass(frozen=True)
class Staged:
    """A copy written to its temp name, not yet durable, verified or in place."""

    src: bytes
    tmp: bytes
    src_stat: os.stat_result  # the source as it was copied
    head: int
    full: bytes
    bytes_read: int


def copy_verified(src: bytes, dest: bytes, expect: Ident | None = None,
                  on_step: Step = _noop) -> CopyResult:
    """Copy one file (steps 1-5 of the module docstring); raise CopyError.

    For many files prefer stage_copy + sync_filesystem + place_copy: one
    filesystem sync covers a whole batch instead of one fsync per file.
    """
    staged = stage_copy(src, os.path.dirname(dest) or b".", expect)
    on_step("written")
    try:
        fd = handles.open_at(staged.tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        on_step("synced")
        res = place_copy(staged, dest, on_step)
        fsync_dir(os.path.dirname(dest))
        return res
    except BaseException:
        discard(staged)
        raise


def _open_src(src: bytes) -> int:
    testpoints.at("read.open", src)
    try:
        try:
            return handles.open_at(src, _RD | _NOATIME)
        except PermissionError:
            return handles.open_at(src, _RD)  # O_NOATIME needs ownership; retry without it
    except FileNotFoundError:
        raise CopyError("vanished", "source disappeared before the copy") from None
    except handles.PathChanged as e:
        raise CopyError(e.reason, f"source refused: {e.strerror}") from None
    except OSError as e:
        raise CopyError("error", f"cannot open source: {e.strerror}") from None


def _open_expected(src: bytes, expect: Ident | None) -> tuple[int, os.stat_result]:
    sfd = _open_src(src)
    st = os.fstat(sfd)
    if not stat.S_ISREG(st.st_mode) or (expect is not None and Ident.of(st) != expect):
        os.close(sfd)
        raise CopyError("changed", "source changed since it was indexed")
    return sfd, st


def stage_copy(src: bytes, dest_dir: bytes, expect: Ident | None = None) -> Staged:
    """Write src to a fresh temp name in dest_dir (created if needed), hashing it, with
    the source's mode, owner and mtime. Not fsynced: the caller syncs the batch."""
    sfd, st = _open_expected(src, expect)
    try:
        testpoints.at("mutate", dest_dir)
        make_dirs(dest_dir)
        tmp = os.path.join(dest_dir, TMP_PREFIX + os.urandom(8).hex().encode() + TMP_SUFFIX)
        with handles.Parent(tmp) as parent:
            tfd = parent.open(os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            head, full, nread = _write_copy(sfd, tfd, st)
            _set_meta(tfd, st)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        finally:
            os.close(tfd)
        return Staged(src, tmp, st, head, full, nread)
    except OSError as e:
        raise CopyError("error", f"{e.strerror or e} while copying") from None
    finally:
        os.close(sfd)


def place_copy(staged: Staged, dest: bytes, on_step: Step = _noop) -> CopyResult:
    """Compare the (already durable) temp copy with the source byte for byte, then link
    it to dest without clobbering. On CopyError("exists") the temp file is kept so the
    caller may place it under another name; on any other error it is removed."""
    try:
        sfd, _ = _open_expected(staged.src, Ident.of(staged.src_stat))
        try:
            tfd = handles.open_at(staged.tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                nread = staged.bytes_read + _compare(sfd, tfd, staged.src_stat)
            finally:
                os.close(tfd)
        finally:
            os.close(sfd)
        on_step("verified")
        _place(staged.tmp, dest)
        on_step("placed")
        return CopyResult(dest, staged.head, staged.full, handles.lstat(dest), nread,
                          staged.src_stat.st_size)
    except CopyError as e:
        if e.reason != "exists":
            discard(staged)
        raise
    except OSError as e:
        discard(staged)
        raise CopyError("error", f"{e.strerror or e} while placing the copy") from None


def discard(staged: Staged) -> None:
    _unlink_quiet(staged.tmp)


def sync_filesystem(path: bytes) -> None:
    """Make everything written to path's filesystem durable: syncfs(2), one journal
    commit for a whole batch instead of an fsync per file."""
    fd = handles.open_dir(path)
    try:
        if _libc_syncfs(fd) != 0:
            os.sync()  # no syncfs: the global sync is slower but as safe
    finally:
        os.close(fd)


_SYNCFS: list[object] = []


def _libc_syncfs(fd: int) -> int:
    import ctypes
    import ctypes.util

    if not _SYNCFS:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _SYNCFS.append(getattr(lib, "syncfs", None))
    fn = _SYNCFS[0]
    if fn is None:
        return -1
    return int(fn(fd))  # type: ignore[operator]


def _write_copy(sfd: int, tfd: int, st: os.stat_result) -> tuple[int, bytes, int]:
    os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    h = xxhash.xxh3_128()
    head_buf = b""
    total = 0
    while True:
        data = os.read(sfd, BUF)
        if not data:
            break
        if len(head_buf) < HEAD_SIZE:
            head_buf += data[: HEAD_SIZE - len(head_buf)]
        h.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(tfd, view):]
        total += len(data)
    _same(sfd, st)
    if total != st.st_size:
        raise CopyError("changed", "source size changed during the copy")
    return xxhash.xxh3_64_intdigest(head_buf), h.digest(), total


def _compare(sfd: int, tfd: int, st: os.stat_result) -> int:
    """Compare the written copy with the source byte for byte; return source bytes read."""
    # Drop the copy's cached pages so the compare reads what reached the disk where
    # the filesystem honours it (zfs-fuse and some FUSE mounts ignore the advice).
    os.posix_fadvise(tfd, 0, 0, os.POSIX_FADV_DONTNEED)
    off = 0
    while off < st.st_size:
        a = os.pread(sfd, BUF, off)
        b = os.pread(tfd, BUF, off)
        if not a or a != b:
            raise CopyError("mismatch", f"copy differs from source at byte {off}")
        off += len(a)
    if os.pread(tfd, 1, off):
        raise CopyError("mismatch", "copy is longer than the source")
    _same(sfd, st)
    return off


def _same(sfd: int, st: os.stat_result) -> None:
    if Ident.of(os.fstat(sfd)) != Ident.of(st):
        raise CopyError("changed", "source changed while it was being copied")


def _set_meta(tfd: int, st: os.stat_result) -> None:
    """Mode, owner (root only; a failure is not an error) and atime/mtime of the source."""
    if os.geteuid() == 0:
        # A uid the archive filesystem cannot store is not an error: keep ours.
        with contextlib.suppress(OSError):
            os.fchown(tfd, st.st_uid, st.st_gid)
    with contextlib.suppress(OSError):  # filesystems without POSIX modes (some SMB mounts)
        os.fchmod(tfd, stat.S_IMODE(st.st_mode))
    os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _place(tmp: bytes, dest: bytes) -> None:
    """Give the temp copy its real name through both directories' handles."""
    testpoints.at("mutate", dest)
    with handles.Parent(tmp) as tp, handles.Parent(dest) as dp:
        try:
            os.link(tp.name, dp.name, src_dir_fd=tp.fd, dst_dir_fd=dp.fd,
                    follow_symlinks=False)
        except FileExistsError:
            raise CopyError("exists", "destination appeared during the copy") from None
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            try:
                dp.lstat()
            except FileNotFoundError:
                os.rename(tp.name, dp.name, src_dir_fd=tp.fd, dst_dir_fd=dp.fd)
                return
            raise CopyError("exists", "destination appeared during the copy") from None
        os.unlink(tp.name, dir_fd=tp.fd)


def make_dirs(path: bytes) -> None:
    """mkdir -p (0755), by handle, fsyncing each parent whose entry we created so the
    tree survives a crash; a level that is a symlink is refused (PathChanged)."""
    link_ops.make_dirs(os.path.abspath(path), 0o755)


def _unlink_quiet(path: bytes) -> None:
    with contextlib.suppress(OSError), handles.Parent(path) as p:
        os.unlink(p.name, dir_fd=p.fd)


def is_temp_name(name: bytes) -> bool:
    return name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX)


def remove_stale_temps(root: bytes, dry_run: bool = False) -> list[bytes]:
    """Delete the temp files an interrupted copy left under root; return their paths.

    Only names of the exact `.dedupd-copy.<hex>.tmp` shape are touched. The
    caller holds the archive lock, so no live copy owns one of them.
    """
    found: list[bytes] = []
    # fwalk descends by fd without following symlinks: removal acts on the very
    # directory that was listed.
    for dirpath, _dirs, files, dfd in os.fwalk(root):
        for name in files:
            if is_temp_name(name):
                found.append(os.path.join(dirpath, name))
                if not dry_run:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dfd)
    return found


LOCK_NAME = b".dedupd-consolidate.lock"


class Locked(Exception):
    """Another dedupd process is importing into the same archive."""


def lock_archive(root: bytes) -> int:
    """Take the archive's exclusive lock (non-blocking); return the fd to close later.

    The lock file stays in the archive root (excluded from scans). While a run
    works it holds RUNNING: finding that word when taking the lock means the
    previous run was interrupted and may have left temp files (`was_interrupted`).
    """
    with handles.Parent(os.path.join(root, LOCK_NAME)) as p:
        fd = p.open(os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Locked(os.fsdecode(root)) from None
    return fd


RUNNING = b"running\n"


def was_interrupted(root: bytes) -> bool:
    """True when the last run into this archive did not finish (or never ran here)."""
    try:
        with open(handles.open_at(os.path.join(root, LOCK_NAME)), "rb") as f:
            return f.read(len(RUNNING)) == RUNNING
    except FileNotFoundError:
        return True  # first run, or the marker was removed: sweep to be sure
    except OSError:
        return True


def mark_running(fd: int, running: bool) -> None:
    """Set (durably) or clear the RUNNING marker in the held lock file."""
    os.ftruncate(fd, 0)
    if running:
        os.pwrite(fd, RUNNING, 0)
    os.fsync(fd)
