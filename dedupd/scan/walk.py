"""Walk directory trees with os.scandir.

Never follows symlinks, never crosses a mount point unless asked, skips special
files (counted), and turns unreadable or vanishing entries into Problems instead
of failing the walk.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from stat import S_ISDIR, S_ISREG

from dedupd.scan.events import FileEvent, Problem, WalkStats


@dataclass(frozen=True)
class WalkOptions:
    min_size: int = 1
    exclude: tuple[str, ...] = ()
    cross_mounts: bool = False


def mount_points() -> frozenset[bytes]:
    """Mount points from /proc/self/mountinfo (octal escapes decoded)."""
    points = set()
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split(b" ")
                if len(fields) > 4:
                    points.add(_unescape_mount(fields[4]))
    except OSError:
        pass
    return frozenset(points)


def _unescape_mount(raw: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


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


def walk(roots: Sequence[bytes], opts: WalkOptions, stats: WalkStats) -> Iterator[FileEvent]:
    """Yield every regular file under the (normalized) roots; counts go to stats."""
    mounts = frozenset() if opts.cross_mounts else mount_points()
    for root in roots:
        try:
            st = os.lstat(root)
        except OSError as e:
            stats.problems.append(Problem(root, "unreadable", e.strerror or str(e)))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_tree(root, opts, mounts, stats)
        else:
            ev = _classify(root, st, opts, stats)
            if ev is not None:
                yield ev


def _walk_tree(
    root: bytes, opts: WalkOptions, mounts: frozenset[bytes], stats: WalkStats
) -> Iterator[FileEvent]:
    stack = [root]
    while stack:
        d = stack.pop()
        stats.dirs_seen += 1
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            stats.problems.append(Problem(d, "vanished", "directory disappeared during the walk"))
            continue
        except OSError as e:
            stats.problems.append(Problem(d, "unreadable", e.strerror or str(e)))
            continue
        # Iterate lazily: a directory with a million entries must not become a list.
        with it:
            for entry in it:
                st = _entry_stat(entry, opts, stats)
                if st is None:
                    continue
                # the common case first, inline: this loop runs once per file
                if S_ISREG(st.st_mode) and st.st_size >= opts.min_size:
                    stats.files_seen += 1
                    yield FileEvent(entry.path, st.st_dev, st.st_ino, st.st_size,
                                    st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid,
                                    st.st_gid, st.st_nlink)
                elif S_ISDIR(st.st_mode):
                    if entry.path in mounts:
                        stats.mount_points_skipped += 1
                    else:
                        stack.append(entry.path)
                else:
                    ev = _classify(entry.path, st, opts, stats)
                    if ev is not None:
                        yield ev


def _entry_stat(entry: os.DirEntry[bytes], opts: WalkOptions, stats: WalkStats
                ) -> os.stat_result | None:
    """lstat of a directory entry, or None when excluded or unreadable (counted)."""
    if opts.exclude and _excluded(entry.name, entry.path, opts.exclude):
        stats.excluded += 1
        return None
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        stats.problems.append(Problem(entry.path, "vanished", "disappeared during the walk"))
    except OSError as e:
        stats.problems.append(Problem(entry.path, "unreadable", e.strerror or str(e)))
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


def _excluded(name: bytes, path: bytes, patterns: tuple[str, ...]) -> bool:
    if not patterns:
        return False
    n, p = os.fsdecode(name), os.fsdecode(path)
    return any(fnmatch.fnmatchcase(n, pat) or fnmatch.fnmatchcase(p, pat) for pat in patterns)
