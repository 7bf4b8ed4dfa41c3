"""Verified copy into a directory that never leaves a partial file under a real name.

Contract of `copy_verified(src, dest)`:

1. open the source (no symlinks followed) and check it is the expected inode,
   unchanged (dev, ino, size, mtime_ns, ctime_ns);
2. write it to `.dedupd-copy.<random>.tmp` in dest's directory -- or, when a
   batch's DestDirs holds it and the filesystem can, to a file with no name at
   all (O_TMPFILE, fsops/anon.py) --, hashing what was read (XXH3-64 head +
   XXH3-128 whole); a source of at most KEEP_BYTES stays in memory, as read;
3. set mode, owner (when we may) and mtime, then make the temp file durable
   and drop its cached pages (where the filesystem honours it);
4. read the temp file back from the disk and compare every byte with the
   source: with the bytes kept in memory (the source is read once), else by
   reading the source again side by side; either way the source must still
   be the inode that was copied, unchanged (size, mtime, ctime: any write
   moves the ctime), checked on the handle it was read through;
5. put it in place without clobbering: `link(tmp, dest)` fails if dest exists
   (a plain `rename` would silently replace a file someone else put there);
   then unlink tmp and fsync the directory. Filesystems without hardlinks fall
   back to check-then-rename.

A crash at any point leaves at most a temp file (which `remove_stale_temps`
deletes on the next run; a file with no name is freed by the filesystem) and
never a half-written file under `dest`.

Batches: `stage_copy` does steps 1-2 and the metadata of 3 for one file;
`sync_batch` then makes a whole batch durable with one syncfs(2) (an fsync
per small file costs a journal commit each: 2-3 ms on the test VM) and drops
and prefetches the batch's temp files together (one read-ahead for the batch
instead of one disk round trip per file); `place_copy` does steps 4-5. The
order per file stays write -> durable -> compare -> link, so no name ever
shows undurable or unverified data. `DestDirs` (fsops/destdirs.py)
holds the destination directories' handles for a batch (or a `DirCache`
shared by the batches of a run): each is made and opened once, and every
create, link and unlink of the batch is relative to it. It also holds each
staged temp file and its source open until the copy is placed or discarded:
the sync's cache drop, the read-back, the source's unchanged-check (fstat of
the very handle it was read through) and the final stat need no new open.
A consolidation splits a copy between two processes (consolidate/copyworker.py):
the run reads and hashes the source (`read_source`, fsops/source.py) and writes
the staged file from those bytes, with the source's metadata (`stage_bytes`); the
copy worker gets both handles (`adopt_staged`), syncs the batch and compares the
copy read back from the disk with the source re-read through the very handle it
was read by (`place_copy`), then links it. The read-back
compares are fsops/readback.py; the bytes and metadata written, fsops/fill.py;
the final name, fsops/place.py; the archive's lock and the sweep of temp
names, fsops/archive_lock.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterable

from dedupd import handles, testpoints
from dedupd.files.events import Ident
from dedupd.fsops import fill, place
from dedupd.fsops.archive_lock import TMP_PREFIX, TMP_SUFFIX
from dedupd.fsops.destdirs import DestDirs as DestDirs
from dedupd.fsops.destdirs import DirCache as DirCache
from dedupd.fsops.destdirs import kept_dirs as kept_dirs
from dedupd.fsops.destdirs import make_dirs as make_dirs
from dedupd.fsops.durable import sync_filesystem
from dedupd.fsops.readback import compare_kept, compare_with_source
from dedupd.fsops.source import CopyError, open_expected, same_inode
from dedupd.tuples import NamedTuple

# A source up to this size is kept in memory between its copy and its verify,
# so it is read once; a batch holds at most its byte cap (execute.BATCH_BYTES).
_TMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Errors from link() that mean "this filesystem has no hardlinks", not "dest exists".

Step = Callable[[str], None]
_anon_ids = itertools.count()


class CopyResult(NamedTuple):
    """A copy verified and in place (NamedTuples here: one of each a copy of an
    import, at a third of a frozen dataclass's cost)."""

    dest: bytes
    head: int  # XXH3-64 of the first HEAD_SIZE bytes (the index's head hash)
    full: bytes  # XXH3-128 of the whole content
    dest_stat: os.stat_result
    bytes_read: int  # source bytes read (copy + compare passes)
    bytes_written: int
    data: bytes | None = None  # the verified content, when it was kept in memory


def _noop(_step: str) -> None:
    return None


class Staged(NamedTuple):
    """A copy written to its temp name, not yet durable, verified or in place."""

    src: bytes
    tmp: bytes
    src_stat: os.stat_result  # the source as it was copied
    head: int
    full: bytes
    bytes_read: int
    data: bytes | None = None  # the source bytes as copied (sources <= KEEP_BYTES)
    anon: bool = False  # tmp is only the key of a file with no name yet (fsops/anon.py)


def copy_verified(src: bytes, dest: bytes, expect: Ident | None = None,
                  on_step: Step = _noop) -> CopyResult:
    """Copy one file (steps 1-5 of the module docstring); raise CopyError.

    For many files prefer stage_copy + sync_batch + place_copy: one
    filesystem sync covers a whole batch instead of one fsync per file.
    """
    with DestDirs() as dirs:
        staged = stage_copy(src, os.path.dirname(dest) or b".", expect, dirs)
        on_step("written")
        try:
            fd = dirs.tmp_fd(staged.tmp)
            assert fd is not None  # stage_copy keeps it in dirs
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            on_step("synced")
            res = place_copy(staged, dest, on_step, dirs)
            handles.fsync_fd(dirs.fd(os.path.dirname(dest)))
            return res
        except BaseException:
            discard(staged, dirs)
            raise


def _at(dirs: DestDirs, path: bytes) -> tuple[int, bytes]:
    """(directory handle, final name) of a path in one of the batch's directories."""
    d, name = os.path.split(path)
    return dirs.fd(d), name


def stage_copy(src: bytes, dest_dir: bytes, expect: Ident | None = None,
               dirs: DestDirs | None = None) -> Staged:
    """Write src to a staged file in dest_dir (created if needed), hashing it, with
    the source's mode, owner and mtime: a file with no name yet when `dirs` is given
    and the filesystem can (fsops/anon.py), else a fresh temp name. Not fsynced: the
    caller syncs the batch (sync_batch). `dirs` holds the batch's directory handles
    (else a private one)."""
    sfd, st = open_expected(src, expect)
    return _stage(src, sfd, st, dest_dir, dirs, lambda tfd: fill.write_copy(sfd, tfd, st))


def stage_bytes(data: bytes | memoryview, st: os.stat_result, dest_dir: bytes,
                dirs: DestDirs, fresh: int | None = None) -> tuple[int, bytes]:
    """Write data (a source's bytes as read, fsops/source.py, whose stat is st) to a
    new staged file in dest_dir -- or to fresh, an empty file with no name that may
    be linked there, which it takes -- with the source's metadata: its handle, and
    b"" for a file with no name (fsops/anon.py) else its temp name. No sync yet: the
    copy worker adopts it (adopt_staged) and does the rest (consolidate/copyworker.py).
    CopyError on failure, the staged file gone."""
    try:
        testpoints.at("mutate", dest_dir)
        if fresh is None:
            tfd, name, anon = _create(dest_dir, dirs, True)
        else:
            tfd, name, anon = fresh, b"", True
        try:
            fill.write_all(tfd, data)
            fill.set_meta(tfd, st)
        except BaseException:
            _drop(tfd, name, anon, dirs.fd(dest_dir))
            raise
    except OSError as e:
        raise CopyError("error", f"{e.strerror or e} while copying") from None
    return tfd, b"" if anon else name


def adopt_staged(src: bytes, tfd: int, sfd: int, st: os.stat_result, head: int,
                 full: bytes, dest_dir: bytes, tmp_name: bytes, dirs: DestDirs) -> Staged:
    """A copy stage_bytes wrote in another process (consolidate/execute.py), from the
    bytes of src read through sfd as st describes it (hashes head and full), both
    handles passed along: the staged file tfd (no name when tmp_name is empty, else
    that temp name in dest_dir) and its source are held in dirs from now on, for
    sync_batch and place_copy (which compares the copy read back with the source
    re-read through sfd) as if staged here. Takes both handles."""
    anon = not tmp_name
    # an anonymous file's key is for dirs only, never a name on the disk
    name = b"%s%d.anon" % (TMP_PREFIX, next(_anon_ids)) if anon else tmp_name
    tmp = os.path.join(dest_dir, name)
    dirs.keep(tmp, tfd, sfd)
    return Staged(src, tmp, st, head, full, 0, None, anon)


def _create(dest_dir: bytes, dirs: DestDirs, anon_ok: bool) -> tuple[int, bytes, bool]:
    """A new staged file in dest_dir: (handle, name, no name). With anon_ok and where
    the filesystem can, a file with no name (nothing to sweep after a crash; the name
    is then a key for dirs only); else a fresh temp name (swept after a crash)."""
    tfd = dirs.anon(dest_dir) if anon_ok else None
    if tfd is not None:
        return tfd, b"%s%d.anon" % (TMP_PREFIX, next(_anon_ids)), True
    name = TMP_PREFIX + os.urandom(8).hex().encode() + TMP_SUFFIX
    return os.open(name, _TMP_FLAGS, 0o600, dir_fd=dirs.fd(dest_dir)), name, False


def _drop(tfd: int, name: bytes, anon: bool, dfd: int) -> None:
    """Close a staged file that failed, and remove its temp name (if it has one)."""
    os.close(tfd)
    if not anon:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dfd)


def _stage(src: bytes, sfd: int, st: os.stat_result, dest_dir: bytes, dirs: DestDirs | None,
           write: Callable[[int], tuple[int, bytes, int, bytes | None]]) -> Staged:
    """Create the staged file (_create), fill it (write), set the metadata; sfd (-1:
    none) is kept with it in dirs (or closed). On failure the staged file is gone and
    sfd closed."""
    own = dirs is None
    d = DestDirs() if dirs is None else dirs
    kept = False
    try:
        testpoints.at("mutate", dest_dir)
        # kept open until placed (anonymous only when dirs holds it until then)
        tfd, name, is_anon = _create(dest_dir, d, not own)
        try:
            head, full, nread, data = write(tfd)
            fill.set_meta(tfd, st)
        except BaseException:
            _drop(tfd, name, is_anon, d.fd(dest_dir))
            raise
        tmp = os.path.join(dest_dir, name)
        if own:
            os.close(tfd)
        else:
            d.keep(tmp, tfd, sfd)  # both open until placed or discarded (DestDirs)
            kept = True
        return Staged(src, tmp, st, head, full, nread, data, is_anon)
    except OSError as e:
        raise CopyError("error", f"{e.strerror or e} while copying") from None
    finally:
        if not kept and sfd >= 0:
            os.close(sfd)
        if own:
            d.close()


def sync_batch(archive: bytes, staged: Iterable[Staged], dirs: DestDirs) -> None:
    """Make a batch durable (one syncfs of the archive's filesystem), then drop the
    temp files' cached pages and ask for them back at once, so each verify reads
    what reached the disk without a disk round trip per file. Staged with dirs, the
    files are reached through the handles dirs keeps, nothing else of dirs: the copy
    worker runs it in a thread of its own while it stages the next batch
    (consolidate/copyloop.py)."""
    sync_filesystem(archive)
    fds: list[int] = []
    opened: list[int] = []
    try:
        for s in staged:
            fd = dirs.tmp_fd(s.tmp)
            if fd is None:  # staged with a private DestDirs
                tdir, tname = _at(dirs, s.tmp)
                fd = os.open(tname, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=tdir)
                opened.append(fd)
            fds.append(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for fd in fds:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        for fd in opened:
            os.close(fd)


def place_copy(staged: Staged, dest: bytes, on_step: Step = _noop,
               dirs: DestDirs | None = None) -> CopyResult:
    """Compare the temp copy, already durable and dropped from the cache (sync_batch),
    with the source byte for byte, then link it to dest without clobbering. On
    CopyError("exists") the temp file is kept so the caller may place it under another
    name; on any other error it is removed."""
    own = dirs is None
    d = DestDirs() if dirs is None else dirs
    try:
        return _verify_and_place(staged, dest, on_step, d)
    except CopyError as e:
        if e.reason != "exists":
            discard(staged, d)
        raise
    except OSError as e:
        discard(staged, d)
        raise CopyError("error", f"{e.strerror or e} while placing the copy") from None
    finally:
        if own:
            d.close()


def _verify_and_place(staged: Staged, dest: bytes, on_step: Step,
                      dirs: DestDirs) -> CopyResult:
    # The source must still be the inode that was copied, unchanged (its ctime moves
    # with any write): checked on the handle it was read through, or re-opened.
    sfd = dirs.src_fd(staged.tmp)
    own_src = sfd is None
    if sfd is None:
        sfd, _ = open_expected(staged.src, Ident.of(staged.src_stat))
    tfd = dirs.tmp_fd(staged.tmp)
    if tfd is None:  # staged with a private DestDirs
        tdir, tname = _at(dirs, staged.tmp)
        tfd = os.open(tname, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=tdir)
        dirs.keep(staged.tmp, tfd, os.dup(sfd))
    try:
        if staged.data is not None:
            compare_kept(staged.data, tfd)
            same_inode(sfd, staged.src_stat)
            nread = staged.bytes_read
        else:  # which checks the source after its compare
            nread = staged.bytes_read + compare_with_source(sfd, tfd, staged.src_stat,
                                                             staged.full, not staged.anon)
    finally:
        if own_src:
            os.close(sfd)
    on_step("verified")
    ddir, dname = _at(dirs, dest)
    if staged.anon:  # its key in dirs is no name: no directory of its own to resolve
        place.place_anon(tfd, ddir, dname, dest)
    else:
        tdir, tname = _at(dirs, staged.tmp)
        place.place_named(tdir, tname, ddir, dname, dest)
    on_step("placed")
    st = os.fstat(tfd)  # the inode now under dest (after the temp name went)
    dirs.release(staged.tmp)
    return CopyResult(dest, staged.head, staged.full, st, nread, staged.src_stat.st_size,
                      staged.data)


def discard(staged: Staged, dirs: DestDirs | None = None) -> None:
    if dirs is None:
        _unlink_quiet(staged.tmp)
        return
    dirs.release(staged.tmp)  # an anonymous file goes with its last handle
    if staged.anon:
        return
    with contextlib.suppress(OSError):
        tdir, tname = _at(dirs, staged.tmp)
        os.unlink(tname, dir_fd=tdir)


def _unlink_quiet(path: bytes) -> None:
    with contextlib.suppress(OSError), handles.Parent(path) as p:
        os.unlink(p.name, dir_fd=p.fd)
