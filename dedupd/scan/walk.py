"""Walk directory trees with os.scandir.

Never follows symlinks, never crosses a mount point unless asked, skips special
files (counted), and turns unreadable or vanishing entries into Problems instead
of failing the walk.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from stat import S_ISDIR, S_ISREG
from typing import Any

from dedupd import handles, testpoints
from dedupd.files.events import FileEvent, Problem, WalkStats


@dataclass(frozen=True)
class WalkOptions:
    min_size: int = 1
    exclude: tuple[str, ...] = ()
    cross_mounts: bool = False


def normalize_roots(roots: Iterable[str | bytes | os.PathLike[str]]) -> list[bytes]:
    """Absolute, symlink-free roots with nested and repeated ones dropped.

    Giving the same tree twice, or a tree and a subtree of it, must never make a
    file its own duplicate, so every file is reached through exactly one root.
    """
    real = sorted({os.path.realpath(os.fsencode(r)) for r in roots})
    kept: list[bytes] = []
    for r in real:
        if not any(r == k or r.startswith(k.rstrip(b"/") + b"/") for k in kept):
            kept.append(r)
    return kept


@dataclass(frozen=True, slots=True)
class DirListed:
    """A directory the walk listed in full (walk_listed): the digest of its listing
    (b"" when it had more than LIST_CAP entries: no digest), how many regular files
    of at least min_size it holds, and whether they were left out of the walk's
    output because the digest equals the index's (`same`)."""

    path: bytes
    digest: bytes
    files: int
    same: bool


LIST_CAP = 20000  # entries of one directory held to digest it; bigger ones stream


def walk_listed(roots: Sequence[bytes], opts: WalkOptions, stats: WalkStats,
                known: Mapping[bytes, tuple[bytes, int]]) -> Iterator[FileEvent | DirListed]:
    """walk(), with a DirListed after each directory's files. A directory whose
    listing digest and st_dev equal known[path] (what the index stored at the last
    scan, and the device its filesystem has now: a snapshot put in the place of its
    source lists alike) yields only its DirListed: its files did not change
    (docs/schema.md)."""
    yield from _walk_roots(roots, opts, stats, known)


def walk(roots: Sequence[bytes], opts: WalkOptions, stats: WalkStats) -> Iterator[FileEvent]:
    """Yield every regular file under the (normalized) roots; counts go to stats.

    Descends by directory handle (see dedupd/handles.py): each subdirectory is
    opened relative to its parent's fd without following symlinks or crossing a
    mount (unless cross_mounts), and must be the inode its listing showed, else
    it is refused as `path_changed`. A root is resolved without following any
    symlink: roots come from normalize_roots, so they have none.
    """
    yield from _walk_roots(roots, opts, stats, None)


def _walk_roots(roots: Sequence[bytes], opts: WalkOptions, stats: WalkStats,
                known: Mapping[bytes, tuple[bytes, int]] | None) -> Iterator[Any]:
    """Each root: a directory walked by handle under its own anchor, a file classified."""
    for root in roots:
        try:
            st = handles.lstat(root)
        except OSError as e:
            stats.problems.append(_problem(root, e))
            continue
        if stat.S_ISDIR(st.st_mode):
            with handles.anchored([root], cross_mounts=opts.cross_mounts):
                yield from _walk_tree(root, st, opts, stats, known)
        else:
            ev = _classify(root, st, opts, stats)
            if ev is not None:
                yield ev


@dataclass
class _Frame:
    """A directory being walked: its fd stays open while its subdirectories are
    visited (so each is opened relative to it), and is closed after. `subdirs` is
    filled by the listing and consumed from its end (last listed, first walked)."""

    fd: int
    path: bytes
    subdirs: list[tuple[bytes, os.stat_result]]


def _walk_tree(root: bytes, rst: os.stat_result, opts: WalkOptions, stats: WalkStats,
               known: Mapping[bytes, tuple[bytes, int]] | None = None) -> Iterator[Any]:
    lister = _list if known is None else functools.partial(_list_digested, known=known)
    try:
        fd = handles.open_dir(root)
    except OSError as e:
        stats.problems.append(_problem(root, e))
        return
    if not _same_dir(fd, root, rst, stats):
        return
    stack = [_Frame(fd, root, [])]  # pushed before listing: closed however we leave
    try:
        yield from lister(fd, root, opts, stats, stack[-1].subdirs)
        while stack:
            top = stack[-1]
            if not top.subdirs:
                os.close(stack.pop().fd)
                continue
            name, st = top.subdirs.pop()
            path = top.path.rstrip(b"/") + b"/" + name
            child = _open_child(top.fd, name, path, st, opts, stats)
            if child is not None:
                stack.append(_Frame(child, path, []))
                yield from lister(child, path, opts, stats, stack[-1].subdirs)
    finally:
        for fr in stack:
            os.close(fr.fd)


def _same_dir(fd: int, path: bytes, st: os.stat_result, stats: WalkStats) -> bool:
    """Whether the opened directory is the inode the listing showed (counted when it
    is; closed and refused as path_changed when it is not)."""
    got = os.fstat(fd)
    if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        stats.problems.append(Problem(path, "path_changed",
                                      "replaced by another directory during the walk"))
        return False
    stats.dirs_seen += 1
    return True


def _open_child(parent: int, name: bytes, path: bytes, st: os.stat_result,
                opts: WalkOptions, stats: WalkStats) -> int | None:
    """The subdirectory `name` of parent's fd, if it is still the listed inode."""
    testpoints.at("walk.subdir", path)
    try:
        fd = handles.open_child_dir(parent, name, cross_mounts=opts.cross_mounts)
    except handles.PathChanged as e:
        if e.errno == errno.EXDEV:
            stats.mount_points_skipped += 1
        else:
            stats.problems.append(_problem(path, e))
        return None
    except OSError as e:
        stats.problems.append(_problem(path, e))
        return None
    return fd if _same_dir(fd, path, st, stats) else None


def _list(fd: int, dpath: bytes, opts: WalkOptions, stats: WalkStats,
          subdirs: list[tuple[bytes, os.stat_result]],
          items: list[tuple[Any, ...]] | None = None) -> Iterator[FileEvent]:
    """Files of one directory (by fd); its subdirectories go to `subdirs`, and with
    `items` every listed entry's digest item (see _list_digested)."""
    base = dpath.rstrip(b"/") + b"/"
    try:
        it = os.scandir(fd)
    except OSError as e:
        stats.problems.append(_problem(dpath, e))
        return
    # Iterate lazily: a directory with a million files must not become a list.
    with it:
        for entry in it:
            name = os.fsencode(entry.name)
            st = _entry_stat(entry, name, base + name, opts, stats)
            if st is None:
                continue
            if items is not None:
                items.append((name, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns,
                              st.st_ctime_ns) if S_ISREG(st.st_mode) else
                             (name, st.st_mode, st.st_ino, 0, 0, 0))
            # the common case first, inline: this loop runs once per file
            if S_ISREG(st.st_mode) and st.st_size >= opts.min_size:
                stats.files_seen += 1
                yield FileEvent(base + name, st.st_dev, st.st_ino, st.st_size,
                                st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid,
                                st.st_gid, st.st_nlink)
            elif S_ISDIR(st.st_mode):
                subdirs.append((name, st))
            else:
                ev = _classify(base + name, st, opts, stats)
                if ev is not None:
                    yield ev


def _list_digested(fd: int, dpath: bytes, opts: WalkOptions, stats: WalkStats,
                   subdirs: list[tuple[bytes, os.stat_result]],
                   known: Mapping[bytes, tuple[bytes, int]]) -> Iterator[FileEvent | DirListed]:
    """_list, holding the directory's files until its listing is digested: every
    entry's name and type, and the inode, size, mtime and ctime of files and the
    inode of directories, sorted by name, under the walk's options. A write, a
    rename, a new or removed name changes it (ctime: set by the kernel only)."""
    h = hashlib.blake2b(repr((opts.min_size, opts.exclude, opts.cross_mounts)).encode(),
                        digest_size=16)
    items: list[tuple[Any, ...]] = []
    held: list[FileEvent] = []
    files, capped = 0, False
    for ev in _list(fd, dpath, opts, stats, subdirs, items):
        files += 1
        if capped:
            yield ev
        elif len(items) > LIST_CAP:  # too big to hold: stream the rest, no digest
            capped = True
            yield from held
            held = []
            yield ev
        else:
            held.append(ev)
    if capped:
        yield DirListed(dpath, b"", files, False)
        return
    items.sort()
    for it in items:
        h.update(repr(it).encode("ascii", "backslashreplace"))
    digest = h.digest()
    same = known.get(dpath) == (digest, os.fstat(fd).st_dev)
    if not same:
        yield from held
    yield DirListed(dpath, digest, files, same)


def _problem(path: bytes, e: OSError) -> Problem:
    if isinstance(e, handles.PathChanged):
        return Problem(path, "path_changed", e.strerror or str(e))
    if isinstance(e, FileNotFoundError):
        return Problem(path, "vanished", "disappeared during the walk")
    return Problem(path, "unreadable", e.strerror or str(e))


def _entry_stat(entry: os.DirEntry[str], name: bytes, path: bytes, opts: WalkOptions,
                stats: WalkStats) -> os.stat_result | None:
    """lstat of a directory entry, or None when excluded or unreadable (counted)."""
    if opts.exclude and excluded(name, path, opts.exclude):
        stats.excluded += 1
        return None
    try:
        return entry.stat(follow_symlinks=False)
    except OSError as e:
        stats.problems.append(_problem(path, e))
    return None


def _classify(
    path: bytes, st: os.stat_result, opts: WalkOptions, stats: WalkStats
) -> FileEvent | None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        stats.symlinks += 1
        return None
    if not stat.S_ISREG(mode):
        stats.special_files += 1
        return None
    stats.files_seen += 1
    if st.st_size < opts.min_size:
        stats.too_small += 1
        return None
    return FileEvent.from_stat(path, st)


def excluded(name: bytes, path: bytes, patterns: tuple[str, ...]) -> bool:
    """Whether a file's name or full path matches one of the exclude globs."""
    if not patterns:
        return False
    n, p = os.fsdecode(name), os.fsdecode(path)
    return any(fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(p, pat) for pat in patterns)
