"""The one reader: open by handle, read, hash, re-check; failures become Problems.

Hashes only *find* candidates (XXH3 is not collision-resistant against a crafted
file); every destructive path compares bytes before acting. Each read is
bracketed by fstat checks (borg's stat_update_check): a file whose identity,
size, mtime or ctime moved while we read it is reported as changed and its hash
is thrown away. `read_one` is the only place that maps a failed read to a
Problem reason; it touches no shared state, so any thread or process may call it.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import xxhash

from dedupd import handles, testpoints
from dedupd.files.events import Problem
from dedupd.index.store import IndexedFile

HEAD_SIZE = 4096
COLD_MISSES = 3  # page cache misses in a row that make the readers deem the cache cold
# Files up to this size are hashed whole in the first read: on a cold cache one
# 128 KiB read costs about what a 4 KiB one does (readahead), and it saves a
# second open for every duplicate.
WHOLE_READ = 128 * 1024
BUF_SIZE = 1 << 20
PREFETCH_BYTES = 4 << 20  # asked ahead per file (see prefetch)
_O_FLAGS = handles.FILE_FLAGS
_NOATIME = getattr(os, "O_NOATIME", 0)
# preadv flag: read only what the page cache holds, else fail with EAGAIN (Linux 4.14+;
# 0 elsewhere: a plain read, which then never misses)
_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_no_nowait: set[int] = set()  # devices whose filesystem refuses RWF_NOWAIT (tmpfs, FUSE)
_tls = threading.local()
_new = tuple.__new__  # a NamedTuple's own __new__ is a Python function: 3x the cost


class FileChanged(Exception):
    """The file is not the one the index describes any more (or changed mid-read)."""


class Got(NamedTuple):
    """What one read learnt: the head hash, the full hash when read whole, bytes read.
    (A NamedTuple: one per file read, at a third of a frozen dataclass's cost.)"""

    head: int
    full: bytes | None
    nread: int


def _buffer() -> memoryview:
    """A read buffer per thread: allocating (and zeroing) 1 MiB per file costs more
    than hashing a small file."""
    buf = getattr(_tls, "buf", None)
    if buf is None:
        buf = _tls.buf = memoryview(bytearray(BUF_SIZE))
    return buf


class Dirs:
    """Directory fds by path, for one run of reads: the files of one directory cost
    one resolution by handle (dedupd.handles), not one each. Files are opened
    relative to the directory's fd, never following the final name. close() when
    done; one thread's."""

    KEEP = 64

    def __init__(self) -> None:
        self.fds: OrderedDict[bytes, int] = OrderedDict()
        self.last: bytes | None = None

    def open(self, path: bytes, flags: int) -> int:
        parent, _, name = path.rpartition(b"/")
        if parent == self.last:  # files of one directory come together
            fd = self.fds[parent]
        elif parent in self.fds:
            fd = self.fds[parent]
            self.fds.move_to_end(parent)
        else:
            fd = self.fds[parent] = handles.open_dir(parent or b"/")
            if len(self.fds) > self.KEEP:
                os.close(self.fds.popitem(last=False)[1])
        self.last = parent
        return handles.open_in(fd, name, flags)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        self.last = None


def open_checked(f: IndexedFile, dirs: Dirs | None = None) -> int:
    """Open f.path read-only by handle and confirm it is still the indexed inode,
    unchanged. Raises FileChanged, handles.PathChanged or another OSError."""
    fd = open_file(f, dirs)
    try:
        check_unchanged(fd, f)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(f: IndexedFile, dirs: Dirs | None = None) -> int:
    """Open f.path read-only by handle, not checked yet: hash_open's check after
    the read is the one that counts (any change since the walk moves ctime)."""
    testpoints.at("read.open", f.path)
    opener = handles.open_at if dirs is None else dirs.open
    try:
        return opener(f.path, _O_FLAGS | _NOATIME)
    except PermissionError:
        # O_NOATIME needs ownership (or CAP_FOWNER); retry without it.
        return opener(f.path, _O_FLAGS)


def check_unchanged(fd: int, f: IndexedFile) -> None:
    """Raise FileChanged unless fd is f's inode with f's size, mtime and ctime."""
    st = os.fstat(fd)
    if (st.st_ctime_ns != f.ctime_ns or st.st_ino != f.ino or st.st_dev != f.dev
            or st.st_size != f.size or st.st_mtime_ns != f.mtime_ns):
        raise FileChanged(os.fsdecode(f.path))


def prefetch(fd: int, f: IndexedFile, full: bool) -> None:
    """Ask the kernel to start reading what hash_open will read. Only the start of
    a file: WILLNEED reads its whole range at once, and several multi-GB videos
    ahead would flush the page cache; sequential readahead takes over after."""
    if full and f.size > PREFETCH_BYTES:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    os.posix_fadvise(fd, 0, min(f.size, PREFETCH_BYTES) if full else HEAD_SIZE,
                     os.POSIX_FADV_WILLNEED)


def hash_open(fd: int, f: IndexedFile, full: bool) -> Got:
    """Hash a descriptor from open_file (head only unless full or small), then
    check it against f's stat; closes it."""
    try:
        size = f.size
        if not full and size > HEAD_SIZE:
            data = os.pread(fd, HEAD_SIZE, 0)
            check_unchanged(fd, f)
            return Got(xxhash.xxh3_64_intdigest(data), None, len(data))
        if size <= WHOLE_READ:  # one read, one-shot hashes: most files of a tree
            data = os.read(fd, size)
            if len(data) != size:
                data += _rest(fd, size - len(data))
                if len(data) != size:
                    raise FileChanged(os.fsdecode(f.path))
            check_unchanged(fd, f)
            return Got(xxhash.xxh3_64_intdigest(data[:HEAD_SIZE]),
                       xxhash.xxh3_128_digest(data), size)
        return _hash_large(fd, f)
    finally:
        os.close(fd)


def _rest(fd: int, n: int) -> bytes:
    """The rest of a short read (a signal, a filesystem that reads in pieces)."""
    parts = []
    while n > 0 and (b := os.read(fd, n)):
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def _hash_large(fd: int, f: IndexedFile) -> Got:
    h128 = xxhash.xxh3_128()
    head = 0
    mv = _buffer()
    total = 0
    # No read for EOF: a file that grew shows in the fstat check below.
    while total < f.size:
        n = os.readv(fd, (mv,))
        if not n:
            break
        if not total:
            head = xxhash.xxh3_64_intdigest(mv[: min(n, HEAD_SIZE)])
        h128.update(mv[:n])
        total += n
    if total != f.size:
        raise FileChanged(os.fsdecode(f.path))
    check_unchanged(fd, f)
    return Got(head, h128.digest(), total)


def read_hashes(f: IndexedFile, full: bool) -> Got:
    """Open, hash and re-check f; failures raise (see open_checked)."""
    return hash_open(open_checked(f), f, full)


def cacheable(f: IndexedFile, full: bool) -> bool:
    """Whether read_cached may be tried for this read: a head, or a small file whole."""
    return (not full or f.size <= WHOLE_READ) and f.dev not in _no_nowait


def read_cached(f: IndexedFile, full: bool, dirs: Dirs) -> Got | Problem | None:
    """read_one for a read that cacheable() allows, when the page cache holds all of
    its bytes (a warm cache): open by the directory's handle, one read, the fstat
    check, close; no read-ahead advice (on a warm cache it is a system call for
    nothing). None when the cache does not hold them: nothing was learnt and the
    caller reads the file the prefetching way (open_ahead, read_one).
    A whole read asks one byte past the indexed size: a file that grew shows."""
    size, path = f[2], f[8][0]
    want = size + 1 if full else HEAD_SIZE
    testpoints.at("read.open", path)
    try:
        try:
            fd = dirs.open(path, _O_FLAGS | _NOATIME)
        except PermissionError:  # O_NOATIME needs ownership (see open_file)
            fd = dirs.open(path, _O_FLAGS)
    except OSError as e:
        return problem(f, e)
    mv = _buffer()
    try:
        try:
            got = os.preadv(fd, (mv[:want],), 0, _NOWAIT)
        except BlockingIOError:  # not cached (EAGAIN)
            got = -1
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                check_unchanged(fd, f)  # another file in its place: "changed"
                raise
            _no_nowait.add(f.dev)
            got = -1
        # the identity check that counts: the walked inode, unchanged since its stat
        # (check_unchanged, written out: this runs once per file of a tree)
        st = os.fstat(fd)
        if (st.st_ctime_ns != f[4] or st.st_ino != f[1] or st.st_dev != f[0]
                or st.st_size != size or st.st_mtime_ns != f[3]):
            raise FileChanged(os.fsdecode(path))
    except (FileChanged, OSError) as e:
        return problem(f, e)
    finally:
        os.close(fd)
    if got < min(want, size):  # not all cached (or shrank: the slow path tells)
        return None
    if got > size:
        return problem(f, FileChanged(os.fsdecode(f.path)))
    data = mv[:got]
    return _new(Got, (xxhash.xxh3_64_intdigest(data[:HEAD_SIZE]),
                      xxhash.xxh3_128_digest(data) if full else None, got))


def read_warm(jobs: Sequence[tuple[IndexedFile, bool, object]]) -> list[Got | None]:
    """read_cached for a batch of reads, directory by directory: each directory is
    resolved by handle once (handles.open_dir) and its files are opened relative to
    that fd, never following the final name. One outcome per job, in order: its
    Got, or None when this path did not answer: not cached (a large file: its first
    MiB), on a device without RWF_NOWAIT, or anything but the plain case (an error,
    a symlink or other file in the name's place, a stat that moved since the walk,
    a short or long read). A None is read again by read_many, whose checks decide
    what it is (a Problem, a cold read). After COLD_MISSES cache misses in a row (a
    cold cache) the rest is None, unread. Every Got passed the same fstat check as
    read_cached, after its read. A large file whose first MiB is cached is read
    whole here, the rest of it from the disk if need be (no disk order to keep:
    its start was in the cache)."""
    out: list[Got | None] = [None] * len(jobs)
    by_dir: dict[bytes, list[tuple[int, bytes, IndexedFile, bool]]] = {}
    nowait_off = _no_nowait
    for i, (f, full, _) in enumerate(jobs):
        if f[0] not in nowait_off:
            parent, _, name = f[8][0].rpartition(b"/")
            by_dir.setdefault(parent, []).append((i, name, f, full))
    mv = _buffer()
    head = mv[:HEAD_SIZE]
    act = testpoints.action("read.open")
    fopen, preadv, fstat, close = os.open, os.preadv, os.fstat, os.close
    h64, h128, head_size = xxhash.xxh3_64_intdigest, xxhash.xxh3_128_digest, HEAD_SIZE
    flags, plain, nowait = _O_FLAGS | _NOATIME, _O_FLAGS, _NOWAIT
    misses = 0
    for parent, files in by_dir.items():
        dfd = -1
        try:
            for i, name, f, full in files:
                if act is not None:
                    act("read.open", f[8][0])
                if dfd < 0:  # resolved at its first file's open, as read_cached does
                    try:
                        dfd = handles.open_dir(parent or b"/")
                    except OSError:
                        break
                try:
                    try:
                        fd = fopen(name, flags, dir_fd=dfd)
                    except PermissionError:  # O_NOATIME needs ownership (see open_file)
                        fd = fopen(name, plain, dir_fd=dfd)
                except OSError:
                    continue
                size = f[2]
                large: Got | None = None
                try:
                    if full and size > WHOLE_READ:
                        large = _large_warm(fd, size, mv)
                        got = -1 if large is None else large[2]
                    else:  # a whole read asks one byte past the size: a file that grew shows
                        got = preadv(fd, (mv[:size + 1] if full else head,), 0, nowait)
                    st = fstat(fd)
                except OSError as e:  # EAGAIN: not cached; anything else: read_many tells
                    if e.errno == errno.EOPNOTSUPP:
                        nowait_off.add(f[0])
                    got, st = -1, None
                finally:
                    close(fd)
                # all of it cached: a whole read got the size (or more: it grew), a
                # head its HEAD_SIZE bytes (or the whole of a shorter file)
                if st is None or got < (size if full or size < head_size else head_size):
                    misses += 1  # a miss (or it shrank: read_many tells)
                    if misses >= COLD_MISSES:
                        return out
                    continue
                if got > size or st.st_ctime_ns != f[4] or st.st_ino != f[1] \
                        or st.st_dev != f[0] or st.st_size != size or st.st_mtime_ns != f[3]:
                    continue  # grew, or not the walked inode as it was: read_many tells
                misses = 0
                if large is not None:
                    out[i] = large
                    continue
                data = mv[:got]
                out[i] = _new(Got, (h64(data[:head_size]), h128(data) if full else None, got))
        finally:
            if dfd >= 0:
                close(dfd)
    return out


def from_cache(fd: int, dev: int, mv: memoryview, off: int) -> int:
    """Read into mv at off what the page cache holds of it, without waiting for the
    disk (RWF_NOWAIT): the bytes read, 0 when none (not cached, or the filesystem of
    dev refuses the flag: then never tried on it again)."""
    if dev in _no_nowait:
        return 0
    try:
        return os.preadv(fd, (mv,), off, _NOWAIT)
    except BlockingIOError:  # not cached (EAGAIN)
        return 0
    except OSError as e:
        if e.errno != errno.EOPNOTSUPP:
            raise
        _no_nowait.add(dev)
        return 0


def _large_warm(fd: int, size: int, mv: memoryview) -> Got | None:
    """Hash a large file whole (as _hash_large) when its first MiB is in the page
    cache, else None; what follows it that is not cached is read from the disk.
    Stops at `size` bytes (or EOF): the caller's fstat tells a file that grew."""
    try:
        n = os.preadv(fd, (mv,), 0, _NOWAIT)
    except BlockingIOError:
        return None
    if n < min(size, len(mv)):
        return None
    head = xxhash.xxh3_64_intdigest(mv[:HEAD_SIZE])
    h = xxhash.xxh3_128(mv[:n])
    total = n
    while total < size and (n := os.preadv(fd, (mv,), total)):
        h.update(mv[:n])
        total += n
    return _new(Got, (head, h.digest(), total))


def problem(f: IndexedFile, e: BaseException) -> Problem:
    """The one mapping of a failed read to a Problem reason."""
    if isinstance(e, FileChanged):
        return Problem(f.path, "changed", "changed while being read")
    if isinstance(e, FileNotFoundError):
        return Problem(f.path, "vanished", "disappeared before hashing")
    if isinstance(e, handles.PathChanged):
        return Problem(f.path, e.reason, e.strerror or str(e))
    if isinstance(e, OSError):
        reason = "unreadable" if e.errno in (errno.EACCES, errno.EPERM) else "error"
        return Problem(f.path, reason, e.strerror or str(e))
    raise e


def read_one(f: IndexedFile, full: bool, fd: int | None = None) -> Got | Problem:
    """read_hashes with a failure as its Problem (fd: already from open_ahead)."""
    try:
        return hash_open(open_checked(f) if fd is None else fd, f, full)
    except (FileChanged, OSError) as e:
        return problem(f, e)


def open_ahead(f: IndexedFile, full: bool, dirs: Dirs | None = None) -> int | Problem:
    """The descriptor to give hash_open, with its first bytes asked for (prefetch);
    a failure as its Problem. Checked now only when it will read more than one
    small read (a changed file is not read through for nothing)."""
    try:
        fd = (open_checked if full and f.size > WHOLE_READ else open_file)(f, dirs)
    except (FileChanged, OSError) as e:
        return problem(f, e)
    prefetch(fd, f, full)
    return fd


def on_disk(f: IndexedFile, dirs: Dirs | None = None) -> tuple[int, int, int]:
    """Sort key: (device, first physical byte, inode); unmapped files sort first."""
    phys = 0
    testpoints.at("read.open", f.path)
    try:
        fd = (handles.open_at if dirs is None else dirs.open)(f.path, _O_FLAGS | _NOATIME)
    except OSError:
        return (f.dev, phys, f.ino)
    try:
        from dedupd import fiemap  # here: a scan of small files never asks

        phys = fiemap.first_physical(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
    return (f.dev, phys, f.ino)


def with_hashes(f: IndexedFile, head: int, full: bytes | None) -> IndexedFile:
    """f with its head (and full hash, when known) filled in."""
    return _new(IndexedFile, (f[0], f[1], f[2], f[3], f[4], head,
                              full if full is not None else f[6], f[7], f[8]))
