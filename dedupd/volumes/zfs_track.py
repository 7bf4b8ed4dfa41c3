"""ZFS change tracking: `zfs diff` lines -> the index work that makes the index
equal to a full walk.

What OpenZFS prints (lib/libzfs/libzfs_diff.c, write_inuse_diffs_one) is one
line per changed *object*, named through the object's single parent pointer
(module/zfs/zfs_znode.c, zfs_obj_to_path_impl: parent pointer, then the first
entry of that directory holding the object). Consequences this module is
built around:

- A name added to an existing file (a hardlink, dedupd's own included) is
  never printed: the file shows as `M F <one name> (+N)`, the directory that
  gained the name as `M / <dir>`. Removing one of several names shows as
  `(-N)` and `M /`. So a modified directory, and the directory of a line
  with a link-count delta, are *re-listed* (one level, not recursively) and
  reconciled with the index: names found are recorded, indexed names no longer
  there are forgotten.
- The parent pointer goes stale when the name it points at is removed while
  other names remain: `zfs diff` then prints `-` for a file that still exists
  or omits the object's later changes (OpenZFS issues #13283, #16753). A `-`
  or renamed-away path is therefore re-checked on disk, never forgotten
  blindly, and a full verification walk runs on a schedule
  (`zfs_full_walk_days`) to catch what was omitted.
- `zfs diff` exits 0 after writing "Unable to determine path or stats for
  object N" to stderr (get_stats_for_obj): output with anything on stderr is
  incomplete and the pass walks the tree instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from dedupd import handles, proc
from dedupd.files.events import FileEvent, Problem, WalkStats
from dedupd.index import extents as ix
from dedupd.index.store import Store
from dedupd.scan.walk import WalkOptions, excluded, normalize_roots, walk
from dedupd.volumes.zfs_diff import DiffEntry, DiffFormatError, parse_diff


@dataclass(frozen=True)
class DiffResult:
    """Parsed `zfs diff -FHt` output, or why it cannot be used (then entries is None)."""

    entries: tuple[DiffEntry, ...] | None
    problem: str | None = None
    incomplete: bool = False  # it ran, but said on stderr that lines are missing


def run_diff(prev: str, new: str, timeout: float = 3600) -> DiffResult:
    """Changes prev -> new. Anything on stderr makes the output untrusted."""
    try:
        r = proc.run(["zfs", "diff", "-FHt", prev, new], timeout=timeout)
    except proc.ProcError as e:
        return DiffResult(None, str(e))
    if r.stderr.strip():
        first = r.stderr.strip().splitlines()[0]
        return DiffResult(None, f"zfs diff {prev} {new} reported problems ({first}); its "
                          "output is incomplete", incomplete=True)
    try:
        return DiffResult(tuple(parse_diff(r.stdout)))
    except DiffFormatError as e:
        return DiffResult(None, str(e))


@dataclass(frozen=True)
class ChangePlan:
    """What a diff asks of the index, by kind of work."""

    walk: tuple[bytes, ...]  # created or renamed-in directories: walked whole
    files: tuple[bytes, ...]  # named files: re-stat, record if still a file, else forget
    relist: tuple[bytes, ...]  # directories whose names changed: list one level, reconcile
    gone_dirs: tuple[bytes, ...]  # removed or renamed-away directories: forget below


def plan(entries: Sequence[DiffEntry]) -> ChangePlan:
    """Pure: the diff's lines sorted into kinds of work (see the module docstring)."""
    walk_: set[bytes] = set()
    files: set[bytes] = set()
    relist: set[bytes] = set()
    gone_dirs: set[bytes] = set()
    for e in entries:
        if e.kind == "/":
            if e.change == "M":  # the dataset's root is printed as "<mountpoint>/"
                relist.add(e.path.rstrip(b"/") or b"/")
            elif e.change == "+":
                walk_.add(e.path)
            else:  # "-" or "R": what was indexed below the old name moved or died
                gone_dirs.add(e.path)
                relist.add(os.path.dirname(e.path.rstrip(b"/")))
                if e.change == "R" and e.new_path is not None:
                    walk_.add(e.new_path)
            continue
        files.add(e.path)
        if e.change == "R" and e.new_path is not None:
            files.add(e.new_path)
        # A name came or went: the directories holding names are listed again. A
        # removed path may still exist (stale parent pointer): re-checked as a file.
        if e.link_delta is not None or e.change in ("-", "R"):
            relist.add(os.path.dirname(e.path))
            if e.new_path is not None:
                relist.add(os.path.dirname(e.new_path))
    return ChangePlan(tuple(sorted(walk_)), tuple(sorted(files)), tuple(sorted(relist)),
                      tuple(sorted(gone_dirs)))


@dataclass
class Reconciled:
    """The outcome of applying a plan: files to record, indexed paths to forget."""

    events: list[FileEvent]
    gone: set[bytes]
    gone_dirs: tuple[bytes, ...]
    relisted: int = 0


class Reconciler:
    """Applies a ChangePlan against the index and the live tree (one pass, one thread)."""

    def __init__(self, store: Store, roots: Sequence[bytes], opts: WalkOptions,
                 stats: WalkStats) -> None:
        self.store, self.roots, self.opts, self.stats = store, list(roots), opts, stats

    def inside(self, p: bytes) -> bool:
        return ix.under(p, self.roots)

    def apply(self, cp: ChangePlan) -> Reconciled:
        relist = {d for d in cp.relist if self.inside(d)}
        files = {p for p in cp.files if self.inside(p)}
        gone_dirs = tuple(d for d in cp.gone_dirs if self.inside(d) or any(
            ix.under(r, [d]) for r in self.roots))
        # The printed name of a file may be a stale one (a removed link): every
        # name the index has for that inode is checked again.
        files |= {p for p in self._other_names(files) if self.inside(p)}
        indexed = self._indexed(relist, files)
        events: dict[bytes, FileEvent] = {}
        gone: set[bytes] = set()
        for d in sorted(relist):
            listed = self._list(d, events)
            if listed is not None:
                gone.update(p for p in indexed.get(d, ()) if p not in listed)
        for p in sorted(files - events.keys()):
            ev = self._file(p)
            if ev is not None:
                events[p] = ev
            else:
                gone.add(p)
        # Walk created directories, and old names of removed ones that exist again.
        fresh = [d for d in cp.walk if self.inside(d)]
        fresh += [d for d in gone_dirs if handles.is_dir(d)]
        # realpath may lead through a symlink a user planted: keep only roots inside
        roots = [r for r in normalize_roots([d for d in fresh if handles.is_dir(d)])
                 if self.inside(r)]
        for ev in walk(roots, self.opts, self.stats):
            events[ev.path] = ev
        return Reconciled(list(events.values()), gone - events.keys(), gone_dirs, len(relist))

    def _other_names(self, files: set[bytes]) -> set[bytes]:
        """Indexed paths of the inodes that the index has under these paths."""
        return self.store.other_names(files) - files

    def _indexed(self, dirs: set[bytes], files: set[bytes]) -> dict[bytes, list[bytes]]:
        """Indexed paths directly in each of dirs."""
        return {d: names for d in dirs if (names := self.store.names_in(d))}

    def _list(self, d: bytes, events: dict[bytes, FileEvent]) -> set[bytes] | None:
        """Add the regular files directly in d to events; returns their paths, or
        None when d cannot be read (then nothing indexed in it is forgotten)."""
        listed: set[bytes] = set()
        try:
            fd = handles.open_dir(d)  # by handle: a directory swapped for a symlink is refused
        except (FileNotFoundError, NotADirectoryError):
            return listed
        except handles.PathChanged as e:
            self.stats.problems.append(Problem(d, e.reason, e.strerror or str(e)))
            return None
        except OSError as e:
            self.stats.problems.append(Problem(d, "unreadable", e.strerror or str(e)))
            return None
        self.stats.dirs_seen += 1
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        continue  # directories report their own changes
                    p = os.path.join(d, os.fsencode(entry.name))
                    ev = self._file(p)
                    if ev is not None:
                        events[p] = ev
                        listed.add(p)
        finally:
            os.close(fd)
        return listed

    def _file(self, p: bytes) -> FileEvent | None:
        """A FileEvent when p is a regular file the volume indexes, else None."""
        if self.opts.exclude and excluded(os.path.basename(p), p, self.opts.exclude):
            self.stats.excluded += 1
            return None
        try:
            st = handles.lstat(p)
        except handles.PathChanged as e:
            self.stats.problems.append(Problem(p, e.reason, e.strerror or str(e)))
            return None
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            self.stats.symlinks += 1
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        self.stats.files_seen += 1
        if st.st_size < self.opts.min_size:
            self.stats.too_small += 1
            return None
        return FileEvent.from_stat(p, st)
