"""Handles, not names: how every path string becomes a file descriptor.

dedupd is root in directories other users write, so a path is a label, never
an authority. `open_at(path, flags)` resolves it from a trusted anchor (the
volume root that holds it, else "/") with the kernel's `openat2`
(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS, plus
RESOLVE_NO_XDEV unless the anchor allows crossing mounts). Without openat2
(kernels < 5.6) the same rules are applied one component at a time with
O_NOFOLLOW | O_DIRECTORY and ".." refused; a mount is recognised there by the
directory fd's mount id differing from its parent's (bind mounts of the same
filesystem keep st_dev, so st_dev cannot tell). That fallback cannot see a
mount made after the anchor was entered (documented in docs/safety.md).

A component that is a symlink, leaves the anchor or crosses a mount raises
`PathChanged` (reason tag `path_changed`): it is refused and counted by the
caller, never followed. Everything that mutates works on `Parent(path)`: the
directory's fd plus the final name, and the final name is never followed.

Anchors are the roots dedupd was configured with (volumes, branches,
consolidation sources and archive); a pass enters them with `anchored(roots)`.
They only make the rule stricter: a path outside every anchor is still
resolved from "/" without following any symlink.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from _thread import allocate_lock  # threading's Lock: see _lock
from contextlib import contextmanager

from dedupd.tuples import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # imported before `dedupd scan` forks its walk: no typing (tuples.py)
    from collections.abc import Callable, Iterable, Iterator
    from typing import Any

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic)
# Errors that mean "the path no longer leads where it did": a symlink (ELOOP),
# an escape or mount crossing (EXDEV), a directory swapped for a file (ENOTDIR).
_MOVED = (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
# Regular files are opened non-blocking: a name swapped for a FIFO must not hang us.
FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class PathChanged(OSError):
    """A component became a symlink, left its anchor, crossed a mount or changed identity."""

    reason = "path_changed"


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


# The process's own symbols, libc among them (find_library would run `ldconfig -p`
# in a subprocess): openat2 here, renameat2 and syncfs in dedupd.fsops.
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None
# Test hook (never set in production): the component-by-component fallback, as on
# kernels without openat2. Read once; in-process tests set the attribute.
FORCE_FALLBACK = bool(os.environ.get("DEDUPD_TEST_NO_OPENAT2"))


def have_openat2() -> bool:
    """True when the kernel has openat2 (5.6+) and the fallback is not forced."""
    global _have_openat2
    if FORCE_FALLBACK:
        return False
    if _have_openat2 is None:
        try:
            os.close(_openat2(-100, b"/", DIR_FLAGS, RESOLVE_NO_SYMLINKS))
            _have_openat2 = True
        except OSError as e:
            _have_openat2 = e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL)
    return _have_openat2


# (flags, mode, resolve) -> (a reference to its open_how, the size), made once: a walk
# opens every directory with one
_HOWS: dict[tuple[int, int, int], tuple[Any, int]] = {}


def _openat2(dirfd: int, path: bytes, flags: int, resolve: int, mode: int = 0) -> int:
    how = _HOWS.get((flags, mode, resolve))
    if how is None:
        made = _OpenHow(flags, mode, resolve)
        how = _HOWS[flags, mode, resolve] = (ctypes.pointer(made), ctypes.sizeof(made))
    fd = LIBC.syscall(_SYS_OPENAT2, dirfd, path, *how)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fsdecode(path))
    return int(fd)


class Anchor(NamedTuple):  # not a dataclass: see dedupd/files/events.py
    root: bytes  # absolute, symlink-free (normalize_roots)
    cross_mounts: bool = False
    fd: int = -1  # the root, opened once when the anchor is entered (-1: open per call)


# _thread's lock is threading's: threading itself (1 ms) is no import before a
# scan's walk is forked
_lock = allocate_lock()
_anchors: list[Anchor] = []


@contextmanager
def anchored(roots: Iterable[bytes], *, cross_mounts: bool = False) -> Iterator[None]:
    """Resolve paths below `roots` beneath them for the duration (process-wide,
    all threads: the workers of a pass see the anchors their pass entered)."""
    added = [Anchor(os.path.normpath(r), cross_mounts, _try_open_root(os.path.normpath(r)))
             for r in roots]
    with _lock:
        _anchors.extend(added)
    try:
        yield
    finally:
        with _lock:  # open_at dups an anchor's fd under this lock: no use after close
            for a in added:
                _anchors.remove(a)
                if a.fd >= 0:
                    os.close(a.fd)


def _try_open_root(root: bytes) -> int:
    """The anchor's fd, or -1 when it cannot be opened now (then each use opens it
    and reports the error where it matters)."""
    try:
        return _open_root(root)
    except OSError:
        return -1


_SLASH = Anchor(b"/", True, os.open(b"/", DIR_FLAGS))  # never closed: "/" outlives us


def anchor_of(path: bytes) -> Anchor:
    """The deepest anchor holding path, else "/" (no symlinks, mounts allowed)."""
    best = _SLASH
    for a in list(_anchors):
        if (path == a.root or path.startswith(a.root.rstrip(b"/") + b"/")) \
                and len(a.root) > len(best.root):
            best = a
    return best


def _split(path: bytes) -> list[bytes]:
    """The components of an absolute path (or of the rest below an anchor)."""
    if not path.startswith(b"/"):
        raise PathChanged(errno.EINVAL, "not an absolute path", os.fsdecode(path))
    parts = [p for p in path.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise PathChanged(errno.EXDEV, "'..' in a path", os.fsdecode(path))
    return parts


def open_at(path: bytes, flags: int = FILE_FLAGS, mode: int = 0) -> int:
    """Open path (absolute) from its anchor, never following a symlink anywhere.

    O_NOFOLLOW is added for the final component. Raises PathChanged when the
    path does not lead where it did (see module doc), other OSErrors as usual.
    """
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    anchor = anchor_of(path)
    parts = _split(path[len(anchor.root):] or b"/" if anchor.root != b"/" else path)
    rel = b"/".join(parts)
    with _lock:  # a dup under the lock cannot race the close when the anchor is left
        root_fd = os.dup(anchor.fd) if anchor.fd >= 0 else -1
    if root_fd < 0:
        root_fd = _open_root(anchor.root)
    try:
        if not parts:
            return os.open(b".", flags, mode, dir_fd=root_fd)
        if have_openat2():
            try:
                return _openat2(root_fd, rel, flags, _beneath(anchor.cross_mounts), mode)
            except OSError as e:
                raise _moved(e, path) from None
        return _open_by_components(root_fd, parts, flags, mode, anchor, path)
    finally:
        os.close(root_fd)


def _beneath(cross_mounts: bool) -> int:
    """openat2's resolve flags below an anchor: no symlink, no escape, no mount crossed
    unless the volume says cross_mounts."""
    resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
    return resolve if cross_mounts else resolve | RESOLVE_NO_XDEV


def _open_root(root: bytes) -> int:
    """The anchor itself, reached from "/" without following symlinks."""
    parts = _split(root)
    if not parts:
        return os.dup(_SLASH.fd)
    if have_openat2():
        try:
            return _openat2(_SLASH.fd, b"/".join(parts), DIR_FLAGS,
                            RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            raise _moved(e, root) from None
    return _open_by_components(_SLASH.fd, parts, DIR_FLAGS, 0, _SLASH, root)


def _open_by_components(dirfd: int, parts: list[bytes], flags: int, mode: int,
                        anchor: Anchor, path: bytes) -> int:
    """The fallback resolver: one O_NOFOLLOW | O_DIRECTORY open per directory."""
    fd = os.dup(dirfd)
    try:
        mnt = -1 if anchor.cross_mounts else _mount_id(fd, path)
        for part in parts[:-1]:
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                raise _moved(e, path) from None
            os.close(fd)
            fd = nfd
            if not anchor.cross_mounts:
                _refuse_mount(fd, mnt, path)
        try:
            out = os.open(parts[-1], flags, mode, dir_fd=fd)
        except OSError as e:
            raise _moved(e, path) from None
        if not anchor.cross_mounts:  # the final name can be a mount point too (bind)
            try:
                _refuse_mount(out, mnt, path)
            except BaseException:
                os.close(out)
                raise
        return out
    finally:
        os.close(fd)


def _refuse_mount(fd: int, parent_mnt: int, path: bytes) -> None:
    """The fallback's NO_XDEV: PathChanged(EXDEV) when the directory fd was reached
    through another mount than its parent's. The mount id, not st_dev, decides: a
    bind mount of the same filesystem keeps st_dev, and a BTRFS subvolume changes
    st_dev without being a mount."""
    if _mount_id(fd, path) != parent_mnt:
        raise PathChanged(errno.EXDEV, "crosses a mount point", os.fsdecode(path))


def _mount_id(fd: int, path: bytes) -> int:
    """The fd's mount id; when the kernel does not say (/proc not mounted), the
    fallback cannot tell a mount point from a directory and refuses (EXDEV)."""
    try:
        from dedupd.files import mounts  # the fallback's only: not before a scan's walk

        return mounts.mount_id(fd)
    except OSError:
        raise PathChanged(errno.EXDEV, "cannot tell whether it crosses a mount point "
                          "(no mnt_id in /proc/self/fdinfo)", os.fsdecode(path)) from None


def _moved(e: OSError, path: bytes) -> OSError:
    if e.errno in _MOVED and not isinstance(e, PathChanged):
        what = {errno.ELOOP: "a component is a symlink",
                errno.EXDEV: "leaves the volume or crosses a mount point",
                errno.ENOTDIR: "a directory was replaced by a file"}[e.errno]
        return PathChanged(e.errno, what, os.fsdecode(path))
    return e


def open_child_dir(parent: int, name: bytes, *, cross_mounts: bool = False) -> int:
    """Subdirectory `name` of the directory fd `parent`: not a symlink, not a mount
    point unless cross_mounts (PathChanged with EXDEV then)."""
    if have_openat2():
        try:
            return _openat2(parent, name, DIR_FLAGS, _beneath(cross_mounts))
        except OSError as e:
            raise _moved(e, name) from None
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError as e:
        raise _moved(e, name) from None
    try:
        if not cross_mounts:
            _refuse_mount(fd, _mount_id(parent, name), name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def child_dir_opener(cross_mounts: bool = False) -> Callable[[int, bytes], int]:
    """open_child_dir(parent, name) with cross_mounts bound, for a loop that opens
    many (a walk: one a directory): openat2's arguments are made once here, not per
    call (half of a directory's open in Python)."""
    if not have_openat2():
        return lambda parent, name: open_child_dir(parent, name, cross_mounts=cross_mounts)
    made = _OpenHow(DIR_FLAGS, 0, _beneath(cross_mounts))
    how, size, call = ctypes.pointer(made), ctypes.sizeof(made), LIBC.syscall

    def opener(parent: int, name: bytes) -> int:
        fd: int = call(_SYS_OPENAT2, parent, name, how, size)
        if fd < 0:
            err = ctypes.get_errno()
            raise _moved(OSError(err, os.strerror(err), os.fsdecode(name)), name)
        return fd

    return opener


def open_in(dirfd: int, name: bytes, flags: int = FILE_FLAGS) -> int:
    """Open the entry `name` (one component) of the directory fd `dirfd` (from
    open_dir), never following it: a symlink there raises PathChanged."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as e:
        raise _moved(e, name) from None


def open_dir(path: bytes) -> int:
    """A directory fd for path (O_RDONLY, usable for scandir, fsync and *at calls)."""
    return open_at(path, DIR_FLAGS)


class Parent:
    """The directory holding `path`, as an fd, and the final name.

    Use as a context manager; every *at call on `fd` with `name` acts on the
    entry of that very directory, whatever happens to the path string meanwhile.
    """

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.dir, self.name = os.path.split(path.rstrip(b"/"))
        if not self.name or self.name in (b".", b".."):
            raise PathChanged(errno.EINVAL, "no final name", os.fsdecode(path))
        self.fd = open_dir(self.dir or b"/")
        self.owned = True

    def __enter__(self) -> Parent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0 and self.owned:
            os.close(self.fd)
        self.fd = -1

    def sibling(self, path: bytes) -> Parent:
        """Another name in this same directory, sharing this handle (not closed by it)."""
        dir_, name = os.path.split(path.rstrip(b"/"))
        if dir_ != self.dir or not name or name in (b".", b".."):
            raise PathChanged(errno.EINVAL, "not a name of this directory", os.fsdecode(path))
        other = Parent.__new__(Parent)
        other.path, other.dir, other.name, other.fd, other.owned = path, dir_, name, self.fd, False
        return other

    def lstat(self) -> os.stat_result:
        return os.stat(self.name, dir_fd=self.fd, follow_symlinks=False)

    def open(self, flags: int = FILE_FLAGS, mode: int = 0) -> int:
        return os.open(self.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def fsync(self) -> None:
        fsync_fd(self.fd)


def lstat(path: bytes) -> os.stat_result:
    """lstat through the parent's handle (the final component is not followed)."""
    with Parent(path) as p:
        return p.lstat()


def is_dir(path: bytes) -> bool:
    """A directory reached by handle (a symlink anywhere on the way is not one)."""
    try:
        return stat.S_ISDIR(lstat(path).st_mode)
    except OSError:
        return False


def exists(path: bytes) -> bool:
    """Whether the final name exists (not followed), reached by handle; a path that
    no longer leads there raises PathChanged."""
    try:
        lstat(path)
    except FileNotFoundError:
        return False
    return True


def fsync_fd(fd: int) -> None:
    """fsync a directory fd; FUSE filesystems that lack directory fsync are tolerated."""
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise


def same_inode(st: os.stat_result, key: tuple[int, int]) -> bool:
    return (st.st_dev, st.st_ino) == key
