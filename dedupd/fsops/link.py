"""Mutation primitives of the hardlink and cross-drive dedup paths.

Every function here changes the filesystem in one small, crash-safe step,
through directory handles (dedupd/handles.py), and makes it durable (fsync of
the directory that changed) before returning, unless the caller passes
durable=False and syncs its whole batch before recording the next state.
Callers record the intent in the journal *before* calling, and the next state
after.

None of these functions ever removes the last name of some content on its own:
`rename_over` replaces a name atomically, `unlink_if_inode` removes a name only
while it is the inode the caller proved has another copy (that proof is the
caller's contract, not checked here), and `link_exact` never overwrites (EEXIST).
renameat2 and the hold primitives under them live in fsops/names.py; the step by step
swap of one name of a hardlink batch (Swap), made of these, in fsops/swap.py.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence

from dedupd import dirhandles, handles, testpoints
from dedupd.fsops.names import exchange_in, hold_in, put_back, renameat2
from dedupd.fsops.release import Releaser

TEMP_PREFIX = b".dedupd-tmp-"
# The name a file is moved to while it is checked (unlink_if_inode; a hardlink swap
# without RENAME_EXCHANGE: hold_name). Not a temp name: whatever a crash leaves under
# it is walked and kept like any file.
HOLD_PREFIX = b".dedupd-hold-"
QUARANTINE_SUFFIX = b".dedupd-q"


def _rand() -> bytes:
    """16 random hex digits (os.urandom, as the secrets module gives them, without
    importing it and its dependencies on every pass)."""
    return os.urandom(8).hex().encode()


def temp_name(target: bytes) -> bytes:
    """A fresh hidden name in target's directory, e.g. `dir/.dedupd-tmp-<hex>`."""
    d = os.path.dirname(target) or b"."
    return os.path.join(d, TEMP_PREFIX + _rand())


def is_temp_name(path: bytes) -> bool:
    return os.path.basename(path).startswith(TEMP_PREFIX)


def hold_name(temp: bytes) -> bytes:
    """The hold name of a journalled op whose temp name is `temp` (temp_name): the
    same directory and random part, so the journal row that names the temp name
    names this one too (recovery gives a held file its name back)."""
    d, base = os.path.split(temp)
    return os.path.join(d, HOLD_PREFIX + base[len(TEMP_PREFIX):])


class Pair:
    """The parents of two names, resolved once when both live in one directory
    (a temp name next to its target): one handle, one resolution."""

    def __init__(self, a: bytes, b: bytes, dirs: dirhandles.Dirs | None = None) -> None:
        get = handles.Parent if dirs is None else dirs.parent
        self.a = get(a)
        try:
            self.b = get(b) if self.a.dir != os.path.dirname(b.rstrip(b"/")) \
                else self.a.sibling(b)
        except BaseException:
            self.a.close()
            raise

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.b.close()
        self.a.close()

    def sync(self) -> None:
        """fsync the directory (or both) whose entries changed."""
        self.b.fsync()
        if self.a.dir != self.b.dir:
            self.a.fsync()


def link_exact(src: bytes, dst: bytes, *, durable: bool = True,
               expect: tuple[int, int] | None = None) -> None:
    """Hardlink src at the new name dst; raises FileExistsError if dst exists.

    Both names are reached through their directories' handles and neither final
    component is followed. With `expect` (dev, ino), the new name must be that
    inode, else it is removed again and PathChanged raised (src was swapped
    under us). Never overwrites: a name that appeared meanwhile is left alone.
    durable=False skips the directory fsync: for a temporary name whose
    directory the very next step (the swap) fsyncs anyway, and whose loss in a
    crash costs nothing.
    """
    testpoints.at("mutate", dst)
    with Pair(src, dst) as pair:
        link_in(pair.a, pair.b, expect)
        if durable:
            pair.b.fsync()


def link_in(sp: handles.Parent, dp: handles.Parent, expect: tuple[int, int] | None) -> None:
    os.link(sp.name, dp.name, src_dir_fd=sp.fd, dst_dir_fd=dp.fd, follow_symlinks=False)
    if expect is not None:
        st = dp.lstat()
        if not stat.S_ISREG(st.st_mode) or not handles.same_inode(st, expect):
            os.unlink(dp.name, dir_fd=dp.fd)
            raise handles.PathChanged(errno.ESTALE, "the kept file was replaced",
                                      os.fsdecode(sp.path))


def rename_over(src: bytes, dst: bytes, *, durable: bool = True) -> None:
    """Atomically replace the name dst by src (same filesystem), through handles.
    durable=False leaves the directory fsync to the caller's batch sync."""
    testpoints.at("mutate", dst)
    with Pair(src, dst) as pair:
        sp, dp = pair.a, pair.b
        os.rename(sp.name, dp.name, src_dir_fd=sp.fd, dst_dir_fd=dp.fd)
        if durable:
            pair.sync()


def exchange(a: bytes, b: bytes, *, durable: bool = True) -> bool:
    """Atomically swap two names (renameat2 RENAME_EXCHANGE on directory handles).

    Returns False when the filesystem or libc cannot do it (the caller falls
    back to rename_over); raises OSError for any other failure. Test hook:
    DEDUPD_TEST_NO_EXCHANGE=1 forces the fallback (never set in production).
    """
    fn = renameat2()
    if fn is None:
        return False
    testpoints.at("mutate", b)
    with Pair(a, b) as pair:
        if not exchange_in(fn, pair.a, pair.b):
            return False
        if durable:
            pair.sync()
    return True


def unlink_if_inode(path: bytes, dev: int, ino: int, *, durable: bool = True,
                    hold: bytes | None = None, step: Callable[[str], None] | None = None
                    ) -> bool:
    """Remove path only if it still names inode (dev, ino); True if removed.

    The check and the unlink act on the same directory handle, so the name that
    is removed is the one that was checked, wherever the path string now leads.
    hold: the name in path's directory the file is held under while it is checked
    (_remove_in), when the caller's journal names it so that recovery can give it
    back after a crash (default: a fresh random name). step: told "hold" once the
    name is held and "give back" after a give-back (the journal's kill-point hook).
    """
    testpoints.at("mutate", path)
    try:
        p = handles.Parent(path)
    except (FileNotFoundError, handles.PathChanged):
        return False  # the name no longer leads where it did: not ours to remove
    with p:
        if not _remove_in(p, dev, ino, hold, step):
            return False
        if durable:
            p.fsync()
    return True


def _remove_in(p: handles.Parent, dev: int, ino: int, hold: bytes | None = None,
               step: Callable[[str], None] | None = None) -> bool:
    """unlink_in for a name others may replace at any instant (an editor's save: a
    new file renamed over it). A check then an unlink would remove a file put there
    between the two; a rename to a name of our own takes whatever the name holds at
    one instant, which is then checked: not (dev, ino) -> it gets its name back."""
    if not _holds(p, dev, ino):
        return False
    testpoints.at("mutate", p.path)  # a save right after the check is taken by the hold
    if hold is None:
        hold = os.path.join(p.dir, HOLD_PREFIX + _rand())
    h = p.sibling(hold)
    st = hold_in(p, h)
    if step is not None:
        step("hold")
    if _is_file(st, dev, ino):
        os.unlink(h.name, dir_fd=h.fd)
        return True
    put_back(h, p)
    if step is not None:
        step("give back")
    return False


def _is_file(st: os.stat_result, dev: int, ino: int) -> bool:
    """st is the regular file (dev, ino)."""
    return stat.S_ISREG(st.st_mode) and handles.same_inode(st, (dev, ino))


def _holds(p: handles.Parent, dev: int, ino: int) -> bool:
    """p's name is, now, the regular file (dev, ino)."""
    try:
        st = p.lstat()
    except FileNotFoundError:
        return False
    return _is_file(st, dev, ino)


def unlink_in(p: handles.Parent, dev: int, ino: int, release: Releaser | None = None) -> bool:
    """p's name removed if it is, now, the regular file (dev, ino); True if removed.
    release: the inode is held while its name goes, and let go of by that Releaser's
    thread (its blocks freed there: fsops/release.py). The check is then made on the
    held descriptor (what the name held when it was opened) instead of an lstat of the
    name: the same window between check and unlink."""
    if release is not None:
        try:
            fd = release.hold(p.fd, p.name, dev)
        except FileNotFoundError:
            return False
        if fd is not None:
            return _unlink_held(p, dev, ino, fd, release)
    if not _holds(p, dev, ino):
        return False
    os.unlink(p.name, dir_fd=p.fd)
    return True


def _unlink_held(p: handles.Parent, dev: int, ino: int, fd: int, release: Releaser) -> bool:
    """unlink_in with p's entry held by fd (release.hold): checked on fd, then its name
    unlinked and fd handed to release (closed here unless handed over)."""
    try:
        if not _is_file(os.fstat(fd), dev, ino):
            os.close(fd)
            return False
        os.unlink(p.name, dir_fd=p.fd)
    except BaseException:
        os.close(fd)
        raise
    release.release(fd)
    return True


def purge_quarantine(qdir: bytes, max_age_seconds: float, now: float) -> int:
    """Remove quarantined copies older than max_age_seconds; returns how many.

    Only names this module's callers made (suffix QUARANTINE_SUFFIX) are touched,
    through the quarantine directory's handle.
    """
    removed = 0
    try:
        fd = handles.open_dir(qdir)
    except FileNotFoundError:
        return 0
    try:
        for name in os.listdir(fd):
            bname = os.fsencode(name)
            if not bname.endswith(QUARANTINE_SUFFIX):
                continue
            st = os.stat(bname, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and now - st.st_ctime > max_age_seconds:
                os.unlink(bname, dir_fd=fd)
                removed += 1
        if removed:
            handles.fsync_fd(fd)
    finally:
        os.close(fd)
    return removed


def make_private_dirs(path: bytes) -> None:
    """mkdir -p path (mode 0700 for new levels, owned by us), never through a symlink.
    Every level, from /, must be root's or ours and writable by no one else (sticky
    excepted: there others cannot rename what is not theirs), else handles.PathChanged:
    a level another user made or may change could be theirs, or be swapped, and the
    names put in it (quarantined hardlinks) theirs to open and keep."""
    fd = handles.open_dir(b"/")
    for part in [b"", *[p for p in path.split(b"/") if p]]:
        if part:
            fd = _child(fd, part, None)  # closes its argument, even when it raises
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()) or (
                st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            os.close(fd)
            raise handles.PathChanged(errno.EPERM, "a level of the quarantine directory "
                                      "may be changed by another user", os.fsdecode(path))
    os.close(fd)


def make_dirs(path: bytes, mode: int, *, sync: bool = True) -> None:
    """mkdir -p path, new levels owned by us with `mode`, each level opened by handle
    (a symlinked level is refused), each parent whose entry we made fsynced (unless
    sync=False: the caller syncs the whole filesystem before anything depends on it)."""
    parts = [p for p in path.split(b"/") if p]
    fd = handles.open_dir(b"/")
    for part in parts:
        fd = _child(fd, part, None, mode, sync)  # closes its argument, even when it raises
    os.close(fd)


def _child(fd: int, part: bytes, template: os.stat_result | None, mode: int = 0o700,
           sync: bool = True) -> int:
    """Open (making it if missing) subdirectory `part` of fd; closes fd.

    A new level is created 0700 and only then given the template's owner and
    mode, through its own fd (never by name). Returns the child's fd."""
    try:
        try:
            return handles.open_child_dir(fd, part, cross_mounts=True)
        except FileNotFoundError:
            pass
        try:
            os.mkdir(part, 0o700, dir_fd=fd)
        except FileExistsError:
            return handles.open_child_dir(fd, part, cross_mounts=True)
        child = handles.open_child_dir(fd, part, cross_mounts=True)
        if template is None and mode != 0o700:
            os.fchmod(child, mode)  # not umask's say: dedupd's own rule
        if template is not None:
            os.fchown(child, template.st_uid, template.st_gid)
            os.fchmod(child, stat.S_IMODE(template.st_mode))
            os.utime(child, ns=(template.st_atime_ns, template.st_mtime_ns))
        if sync:
            handles.fsync_fd(fd)
        return child
    finally:
        os.close(fd)


def mkdirs_like(root: bytes, rel_dirs: bytes, template_root: bytes) -> list[bytes]:
    """Create root/rel_dirs, each new level with owner and mode of template_root/<level>.

    Both trees are descended by handle (no symlink followed, template levels
    read through their own fds). Returns the directories created (outermost
    first) so a rollback can remove them if they are still empty. Existing
    directories are left as they are.
    """
    created: list[bytes] = []
    testpoints.at("mutate", os.path.join(root, rel_dirs))
    cur, tfd = handles.open_dir(root), handles.open_dir(template_root)
    path = root
    try:
        for part in [p for p in rel_dirs.split(b"/") if p]:
            path = os.path.join(path, part)
            tnext = handles.open_child_dir(tfd, part, cross_mounts=True)
            os.close(tfd)
            tfd = tnext
            try:
                existed = stat.S_ISDIR(os.stat(part, dir_fd=cur, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                existed = False
            parent, cur = cur, -1
            cur = _child(parent, part, os.fstat(tfd))  # closes parent, even when it raises
            if not existed:
                created.append(path)
    finally:
        for fd in (cur, tfd):
            if fd >= 0:
                os.close(fd)
    return created


def rmdirs_if_empty(dirs: Sequence[bytes]) -> None:
    """Remove directories created by mkdirs_like (innermost first) while empty."""
    for d in reversed(list(dirs)):
        try:
            with handles.Parent(d) as p:
                os.rmdir(p.name, dir_fd=p.fd)
                p.fsync()
        except OSError:
            return
