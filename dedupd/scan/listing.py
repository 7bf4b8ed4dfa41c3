"""List one directory (by fd) for the walk (scan/walk.py): its entries lstat'ed and
counted, its subdirectories queued, its files as FileEvents; with the index's
listing digests (walk_listed), the digest of its listing, and its files held back
when that digest says it did not change.

Imported before `dedupd scan` forks its walk, as walk.py is: no typing, re, enum or
signal at run time (tests/unit/test_scan_startup.py)."""

from __future__ import annotations

import functools
import itertools
import marshal
import os
import stat
import sys

# hashlib's blake2b itself, without hashlib's import of OpenSSL (_hashlib): a
# few ms of every `dedupd scan` before its walk is forked
from _blake2 import blake2b
from collections.abc import Iterable, Iterator
from stat import S_ISDIR, S_ISLNK, S_ISREG

from dedupd import handles
from dedupd.files.events import NO_DEV, FileEvent, Problem, WalkStats
from dedupd.tuples import TYPE_CHECKING, NamedTuple

# typing only for the checker (dedupd/tuples.py)
if TYPE_CHECKING:
    from typing import Any, Protocol

    from dedupd.scan.walk import WalkOptions
else:
    Protocol = object  # Known is only named in annotations


class DirListed(NamedTuple):
    """A directory the walk listed in full (walk_listed): the digest of its listing
    (b"" when it had more than LIST_CAP entries: no digest), how many regular files
    of at least min_size it holds, and whether they were left out of the walk's
    output because the digest equals the index's (`same`)."""

    path: bytes
    digest: bytes
    files: int
    same: bool


# a DirListed made by tuple's own constructor (its NamedTuple __new__ is a Python call:
# one a directory walked)
_listed = functools.partial(tuple.__new__, DirListed)
LIST_CAP = 20000  # entries of one directory held to digest it; bigger ones stream


class Known(Protocol):
    """The index's digests: directory path -> (listing digest, st_dev), a dict; or,
    in a walk started before they were read (walkproc), PENDING until they are."""

    def get(self, path: bytes, /) -> tuple[bytes, int] | None: ...


# what Known.get returns while the digests are on their way (compared by identity)
PENDING: tuple[bytes, int] = (b"pending", NO_DEV)


class DirHeld(NamedTuple):
    """A directory listed and digested while its known digest was PENDING: its
    listing items and their lstats, held until it is decided (decided())."""

    path: bytes
    digest: bytes
    files: int
    dev: int
    items: list[tuple[Any, ...]]
    sts: list[os.stat_result]



def _entries(fd: int, dpath: bytes, opts: WalkOptions, stats: WalkStats,
             subdirs: list[tuple[bytes, os.stat_result]]
             ) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry of one directory (by fd) that is not excluded and could be
    lstat'ed, as (name, lstat), counted in stats; subdirectories also go to
    `subdirs` (name as bytes). Names stay str here: most entries of an unchanged
    directory are never turned into a path."""
    try:
        it = os.scandir(fd)
    except OSError as e:
        stats.problems.append(problem(dpath, e))
        return
    base = dpath.rstrip(b"/") + b"/"
    min_size, exclude = opts.min_size, opts.exclude
    # Iterate lazily: a directory with a million files must not become a list.
    with it:
        for entry in it:
            name = entry.name
            if exclude and excluded(os.fsencode(name), base + os.fsencode(name), exclude):
                stats.excluded += 1
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                stats.problems.append(problem(base + os.fsencode(name), e))
                continue
            mode = st.st_mode
            # the common case first: this loop runs once per file of a tree
            if S_ISREG(mode):
                stats.files_seen += 1
                if st.st_size < min_size:
                    stats.too_small += 1
            elif S_ISDIR(mode):
                subdirs.append((os.fsencode(name), st))
            elif S_ISLNK(mode):
                stats.symlinks += 1
            else:
                stats.special_files += 1
            yield name, st


# os.fsencode's own encoding and error handler: str.encode is one C call, where
# os.fsencode is a Python function (its checks); and a FileEvent made by tuple's
# constructor, not its NamedTuple __new__ (a Python call): one of each a file walked
_FS_ENC, _FS_ERR = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_new = tuple.__new__


def _event(base: bytes, name: str, st: os.stat_result) -> FileEvent:
    return _new(FileEvent, (base + name.encode(_FS_ENC, _FS_ERR), st.st_dev, st.st_ino,
                            st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
                            st.st_uid, st.st_gid, st.st_nlink))


def list_files(fd: int, dpath: bytes, _dev: int, opts: WalkOptions, stats: WalkStats,
          subdirs: list[tuple[bytes, os.stat_result]]) -> Iterator[FileEvent]:
    """Files of one directory (by fd); its subdirectories go to `subdirs`."""
    base = dpath.rstrip(b"/") + b"/"
    min_size = opts.min_size
    for name, st in _entries(fd, dpath, opts, stats, subdirs):
        if S_ISREG(st.st_mode) and st.st_size >= min_size:
            yield _event(base, name, st)


def list_digested(fd: int, dpath: bytes, dev: int, opts: WalkOptions, stats: WalkStats,
                   subdirs: list[tuple[bytes, os.stat_result]],
                   known: Known) -> Iterator[FileEvent | DirListed | DirHeld]:
    """_list, holding the directory's files until its listing is digested: every
    entry's name and type, and the inode, size, mtime and ctime of files and the
    inode of directories, sorted by name, under the walk's options. A write, a
    rename, a new or removed name changes it (ctime: set by the kernel only).
    The files of a directory found unchanged never become FileEvents (most of
    an unchanged rescan's directories). dev: the directory's st_dev.

    One loop, no generator between it and scandir: it runs once per entry of
    every rescan, where the lstat it makes is the only other cost."""
    try:
        it = os.scandir(fd)
    except OSError as e:
        stats.problems.append(problem(dpath, e))
        return
    min_size = opts.min_size
    items: list[tuple[Any, ...]] = []  # what the digest covers, in listing order
    sts: list[os.stat_result] = []  # the lstat of each item
    add, keep = items.append, sts.append
    ifmt, ifreg, ifdir = _IFMT, _IFREG, _IFDIR
    other = small = 0
    with it:
        entries: Iterator[os.DirEntry[str]] = it
        if opts.exclude:
            entries = _not_excluded(it, dpath, opts.exclude, stats)
        # a directory of more than LIST_CAP entries is not held: the rest streams
        for entry in itertools.islice(entries, LIST_CAP + 1):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                stats.problems.append(problem(_join(dpath, entry.name), e))
                continue
            mode = st.st_mode
            if mode & ifmt == ifreg:  # the common case first
                size = st.st_size
                add((entry.name, mode, st.st_ino, size, st.st_mtime_ns, st.st_ctime_ns))
                if size < min_size:
                    small += 1
            else:
                name = entry.name
                add((name, mode, st.st_ino, 0, 0, 0))
                if mode & ifmt == ifdir:  # most other entries: no call for them
                    subdirs.append((name.encode(_FS_ENC, _FS_ERR), st))
                else:
                    _other(name, mode, st, stats, subdirs)
                other += 1
            keep(st)
        regular = len(items) - other
        stats.files_seen += regular
        stats.too_small += small
        files = regular - small
        if len(items) > LIST_CAP:  # too big to hold: stream the rest, no digest
            yield from _events(dpath, items, sts, min_size)
            for ev in _rest(dpath, entries, opts, stats, subdirs):
                files += 1
                yield ev
            yield DirListed(dpath, b"", files, False)
            return
    h = _seeded(opts).copy()  # listing_digest(opts, sorted(items)), inline
    h.update(marshal.dumps(sorted(items), 2))
    digest = h.digest()
    was = known.get(dpath)
    if was is PENDING:  # decided once the index's digests are there (walkproc)
        yield DirHeld(dpath, digest, files, dev, items, sts)
    elif _same(was, digest, dev, files):  # most directories of a rescan
        yield _listed((dpath, digest, files, True))
    else:
        yield from _decided(DirHeld(dpath, digest, files, dev, items, sts), was, min_size)


def decided(held: DirHeld, known: Known, min_size: int) -> Iterator[FileEvent | DirListed]:
    """What the walk yields for a directory it held (DirHeld), now that known has
    the index's digests: its DirListed, after its files unless it is unchanged."""
    return _decided(held, known.get(held.path), min_size)


def _decided(held: DirHeld, was: tuple[bytes, int] | None, min_size: int
             ) -> Iterator[FileEvent | DirListed]:
    same = _same(was, held.digest, held.dev, held.files)
    if not same and held.files:
        yield from _events(held.path, held.items, held.sts, min_size)
    yield DirListed(held.path, held.digest, held.files, same)


def _same(was: tuple[bytes, int] | None, digest: bytes, dev: int, files: int) -> bool:
    """Whether the index's (digest, st_dev) `was` says a directory listed with this
    digest, on device dev, holding `files` files, is unchanged."""
    return was is not None and was[0] == digest and (was[1] == dev or (
        was[1] == NO_DEV and not files))


_IFMT, _IFREG, _IFDIR, _IFLNK = 0o170000, stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK


def _join(dpath: bytes, name: str) -> bytes:
    return dpath.rstrip(b"/") + b"/" + os.fsencode(name)


def _other(name: str, mode: int, st: os.stat_result, stats: WalkStats,
           subdirs: list[tuple[bytes, os.stat_result]]) -> None:
    """Count (or, for a directory, queue) a listed entry that is not a regular file."""
    if mode & _IFMT == _IFDIR:
        subdirs.append((os.fsencode(name), st))
    elif mode & _IFMT == _IFLNK:
        stats.symlinks += 1
    else:
        stats.special_files += 1


def _not_excluded(it: Iterable[os.DirEntry[str]], dpath: bytes, exclude: tuple[str, ...],
                  stats: WalkStats) -> Iterator[os.DirEntry[str]]:
    base = dpath.rstrip(b"/") + b"/"
    for entry in it:
        name = os.fsencode(entry.name)
        if excluded(name, base + name, exclude):
            stats.excluded += 1
        else:
            yield entry


def _events(dpath: bytes, items: list[tuple[Any, ...]], sts: list[os.stat_result],
            min_size: int) -> Iterator[FileEvent]:
    """The FileEvents of the held regular files of at least min_size."""
    base = dpath.rstrip(b"/") + b"/"
    for item, st in zip(items, sts, strict=True):
        if item[1] & _IFMT == _IFREG and item[3] >= min_size:
            yield _event(base, item[0], st)


def _rest(dpath: bytes, entries: Iterator[os.DirEntry[str]], opts: WalkOptions,
          stats: WalkStats, subdirs: list[tuple[bytes, os.stat_result]]
          ) -> Iterator[FileEvent]:
    """The FileEvents of the entries a directory has beyond LIST_CAP (streamed)."""
    base = dpath.rstrip(b"/") + b"/"
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as e:
            stats.problems.append(problem(_join(dpath, entry.name), e))
            continue
        mode = st.st_mode
        if mode & _IFMT == _IFREG:
            stats.files_seen += 1
            if st.st_size < opts.min_size:
                stats.too_small += 1
            else:
                yield _event(base, entry.name, st)
        else:
            _other(entry.name, mode, st, stats, subdirs)


def listing_digest(opts: WalkOptions, items: list[tuple[Any, ...]]) -> bytes:
    """The digest of a directory's listing items (sorted by the caller), seeded with
    the walk's options. marshal version 2 writes no back-references, so equal
    listings give equal bytes whichever objects hold them; and one C call serializes
    the whole listing (a repr per item cost more than the lstat it describes)."""
    h = _seeded(opts).copy()
    h.update(marshal.dumps(items, 2))
    return h.digest()


@functools.lru_cache(maxsize=8)
def _seeded(opts: WalkOptions) -> blake2b:
    """A digest seeded with the walk's options (made once per options, copied per
    directory)."""
    return blake2b(repr((opts.min_size, opts.exclude, opts.cross_mounts)).encode(),
                           digest_size=16)



def problem(path: bytes, e: OSError) -> Problem:
    if isinstance(e, handles.PathChanged):
        return Problem(path, "path_changed", e.strerror or str(e))
    if isinstance(e, FileNotFoundError):
        return Problem(path, "vanished", "disappeared during the walk")
    return Problem(path, "unreadable", e.strerror or str(e))



def excluded(name: bytes, path: bytes, patterns: tuple[str, ...]) -> bool:
    """Whether a file's name or full path matches one of the exclude globs."""
    if not patterns:
        return False
    import fnmatch  # only with patterns given: fnmatch imports re (see above)

    n, p = os.fsdecode(name), os.fsdecode(path)
    return any(fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(p, pat) for pat in patterns)
