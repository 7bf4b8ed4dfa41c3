"""Walk directory trees with os.scandir.

Never follows symlinks, never crosses a mount point unless asked, skips special
files (counted), and turns unreadable or vanishing entries into Problems instead
of failing the walk.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence

from dedupd import handles, testpoints
from dedupd.files.events import FileEvent, Problem, WalkStats

# one directory's listing, its digest and DirListed are in listing.py (re-exported:
# the walk's users import them from here)
from dedupd.scan.listing import (
    LIST_CAP,
    PENDING,
    DirHeld,
    DirListed,
    Known,
    decided,
    excluded,
    listing_digest,
    problem,
)
from dedupd.scan.listing import list_digested as _list_digested
from dedupd.scan.listing import list_files as _list
from dedupd.tuples import TYPE_CHECKING, NamedTuple

__all__ = ["LIST_CAP", "PENDING", "RECORD_BATCH", "DirHeld", "DirListed", "Donor", "Known",
           "WalkOptions", "batches", "decided", "excluded", "listing_digest",
           "normalize_roots", "walk", "walk_from", "walk_listed"]

# typing only for the checker: this module is imported before `dedupd scan` forks
# its walk, and typing (with re and enum) is ~5 ms of that start (dedupd/tuples.py)
if TYPE_CHECKING:
    from typing import Any, Protocol, TypeVar

    T = TypeVar("T")
else:
    Protocol = object  # Donor is only named in annotations


# NamedTuples, no dataclasses: this module is imported before `dedupd scan` forks its
# walk (see dedupd/files/events.py), and one DirListed is made per directory walked
class WalkOptions(NamedTuple):
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


# Files recorded per index transaction, and events per batch of the walk process:
# dedupd scan and the volume passes both take it from here.
RECORD_BATCH = 2000


def batches(events: Iterable[T], n: int) -> Iterator[list[T]]:
    """events in lists of n, the last one shorter (each taken as soon as it is full)."""
    batch: list[T] = []
    for e in events:
        batch.append(e)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


class Donor(Protocol):
    """Where a walk shares its work (walkproc: another process that ran out of it).
    wanted() is asked once per directory; give() takes subdirectories the walk has
    listed and will not walk itself: the fd of the directory that listed them (the
    walk keeps it: the donor passes a copy on), its path, and their (name, st_dev,
    st_ino) as listed."""

    def wanted(self) -> bool: ...

    def give(self, fd: int, path: bytes, subdirs: list[tuple[bytes, int, int]]) -> None: ...


def walk_listed(roots: Sequence[bytes], opts: WalkOptions, stats: WalkStats,
                known: Known, donor: Donor | None = None
                ) -> Iterator[FileEvent | DirListed | DirHeld]:
    """walk(), with a DirListed after each directory's files. A directory whose
    listing digest and st_dev equal known[path] (what the index stored at the last
    scan, and the device its filesystem has now: a snapshot put in the place of its
    source lists alike) yields only its DirListed: its files did not change
    (docs/schema.md). donor: when it wants work, the subtree the walk would have
    reached last goes to it instead (walk_from walks it there). While known.get
    returns PENDING, a directory comes as a DirHeld, to be decided()."""
    yield from _walk_roots(roots, opts, stats, known, donor)


def walk_from(fd: int, path: bytes, subdirs: Sequence[tuple[bytes, int, int]],
              opts: WalkOptions, stats: WalkStats, known: Known,
              donor: Donor | None = None) -> Iterator[FileEvent | DirListed | DirHeld]:
    """walk_listed of the subdirectories a Donor gave, each opened relative to the
    directory fd that listed them (owned by this walk from now on, closed however it
    ends) and refused unless it is the listed inode, as if this walk had listed it."""
    held = [(name, os.stat_result((0, ino, dev, 0, 0, 0, 0, 0, 0, 0)))
            for name, dev, ino in subdirs]
    yield from _descend(fd, path, 0, opts, stats, known, donor, held)


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
                known: Known | None,
                donor: Donor | None = None) -> Iterator[Any]:
    """Each root: a directory walked by handle under its own anchor, a file classified."""
    for root in roots:
        try:
            st = handles.lstat(root)
        except OSError as e:
            stats.problems.append(problem(root, e))
            continue
        if stat.S_ISDIR(st.st_mode):
            with handles.anchored([root], cross_mounts=opts.cross_mounts):
                yield from _walk_tree(root, st, opts, stats, known, donor)
        else:
            ev = _classify(root, st, opts, stats)
            if ev is not None:
                yield ev


class _Frame:
    """A directory being walked: its fd stays open while its subdirectories are
    visited (so each is opened relative to it), and is closed after. `subdirs` is
    filled by the listing and consumed from its end (last listed, first walked)."""

    __slots__ = ("fd", "path", "subdirs")

    def __init__(self, fd: int, path: bytes, subdirs: list[tuple[bytes, os.stat_result]]
                 ) -> None:
        self.fd, self.path, self.subdirs = fd, path, subdirs


def _walk_tree(root: bytes, rst: os.stat_result, opts: WalkOptions, stats: WalkStats,
               known: Known | None = None,
               donor: Donor | None = None) -> Iterator[Any]:
    try:
        fd = handles.open_dir(root)
    except OSError as e:
        stats.problems.append(problem(root, e))
        return
    if _same_dir(fd, root, rst, stats):
        yield from _descend(fd, root, rst.st_dev, opts, stats, known, donor)


def _descend(fd: int, root: bytes, dev: int, opts: WalkOptions, stats: WalkStats,
             known: Known | None, donor: Donor | None,
             listed: list[tuple[bytes, os.stat_result]] | None = None) -> Iterator[Any]:
    """The subtree of the verified directory fd (closed however we leave); with
    `listed`, only those of its subdirectories (it was listed elsewhere)."""
    lister = _list if known is None else functools.partial(_list_digested, known=known)
    opener = handles.child_dir_opener(opts.cross_mounts)  # made once, not per directory
    stack = [_Frame(fd, root, listed or [])]  # pushed first: closed however we leave
    try:
        if listed is None:
            yield from lister(fd, root, dev, opts, stats, stack[-1].subdirs)
        while stack:
            if donor is not None and donor.wanted():
                _donate(stack, donor)
            top = stack[-1]
            if not top.subdirs:
                os.close(stack.pop().fd)
                continue
            name, st = top.subdirs.pop()
            path = top.path.rstrip(b"/") + b"/" + name
            child = _open_child(top.fd, name, path, st, opener, stats)
            if child is not None:
                subdirs: list[tuple[bytes, os.stat_result]] = []
                stack.append(_Frame(child, path, subdirs))
                yield from lister(child, path, st.st_dev, opts, stats, subdirs)
    finally:
        for fr in stack:
            os.close(fr.fd)


DONATE_MAX = 256  # subdirectories handed over at once (a bound on the message's size)


def _donate(stack: list[_Frame], donor: Donor) -> None:
    """Give the donor half of the subdirectories this walk would reach last: those
    of the lowest frame that has any left (the biggest shares, as far as the walk
    can tell), keeping the one about to be walked. Nothing when none is left."""
    for fr in stack:
        n = len(fr.subdirs) - (fr is stack[-1])
        if n > 0:
            k = min((n + 1) // 2, DONATE_MAX)
            given = fr.subdirs[:k]
            del fr.subdirs[:k]
            donor.give(fr.fd, fr.path, [(name, st.st_dev, st.st_ino) for name, st in given])
            return


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
                opener: Callable[[int, bytes], int], stats: WalkStats) -> int | None:
    """The subdirectory `name` of parent's fd (by opener: handles.child_dir_opener),
    if it is still the listed inode (_same_dir, inline: once per directory walked)."""
    testpoints.at("walk.subdir", path)
    try:
        fd = opener(parent, name)
    except handles.PathChanged as e:
        if e.errno == errno.EXDEV:
            stats.mount_points_skipped += 1
        else:
            stats.problems.append(problem(path, e))
        return None
    except OSError as e:
        stats.problems.append(problem(path, e))
        return None
    got = os.fstat(fd)
    if got.st_ino == st.st_ino and got.st_dev == st.st_dev:
        stats.dirs_seen += 1
        return fd
    os.close(fd)
    stats.problems.append(Problem(path, "path_changed",
                                  "replaced by another directory during the walk"))
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

