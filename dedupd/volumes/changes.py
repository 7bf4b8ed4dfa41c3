"""What changed on a BTRFS volume since a transid: paths from generation numbers.

Subvolumes come from the tree of tree roots (generation, read-only flag,
place in the hierarchy), mapped to paths through the mount's root; changed
inodes from each writable subvolume's tree (see btrfs_ioctl.changed_inodes),
turned into paths with INO_PATHS. Deletions are found through the directories
that changed: an indexed path below one of them that no longer exists (or is
another inode now) is forgotten. A directory that changed and has nothing
indexed below it (new, or renamed in from elsewhere) is walked.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from dedupd import handles
from dedupd.config import VolumeConfig
from dedupd.files import mounts
from dedupd.files.counters import Counters
from dedupd.files.events import FileEvent, Problem, WalkStats
from dedupd.index import extents as ix
from dedupd.index.store import Store
from dedupd.scan.walk import WalkOptions, excluded, walk
from dedupd.volumes import btrfs_ioctl as bt


@dataclass
class Subvol:
    treeid: int
    path: bytes  # absolute, as seen through the volume's mount
    readonly: bool
    generation: int = 0

    def as_json(self) -> dict[str, object]:
        return {"path": os.fsdecode(self.path), "ro": self.readonly}

    @classmethod
    def from_json(cls, treeid: int, doc: dict[str, object]) -> Subvol:
        return cls(treeid, os.fsencode(str(doc["path"])), bool(doc["ro"]))


def mount_of(path: bytes) -> tuple[bytes, bytes]:
    """(mount point, root of the mount inside its filesystem) for the mount holding path."""
    m = mounts.mount_of_path(path)
    return (b"", b"/") if m is None else (m.mountpoint, m.root)


def visible_subvols(volume_root: bytes) -> dict[int, Subvol]:
    """Subvolumes reachable below volume_root through its mount (treeid -> Subvol)."""
    mnt, mroot = mount_of(volume_root)
    fd = bt.open_dir(volume_root)
    try:
        roots = bt.list_roots(fd)
        tops = bt.subvol_paths(fd, roots)
    finally:
        os.close(fd)
    base = mroot.rstrip(b"/")
    out = {}
    for tid, top in tops.items():
        full = b"/" + top if top else b""
        if full != base and not full.startswith(base + b"/"):
            continue
        path = mnt.rstrip(b"/") + full[len(base):] or b"/"
        if ix.under(path, [volume_root]) or ix.under(volume_root, [path]):
            r = roots[tid]
            out[tid] = Subvol(tid, path, r.readonly, r.generation)
    return out


class ChangeFinder:
    """Subvolume bookkeeping and incremental change discovery for one pass."""

    def __init__(self, vol: VolumeConfig, c: Counters, stats: WalkStats) -> None:
        self.vol, self.c, self.stats = vol, c, stats
        self.subvols: dict[int, Subvol] = {}
        self._ro_dev: dict[int, bool] = {}
        self.forgotten = 0

    def can_search(self, root: bytes) -> bool:
        """Whether tree searches are allowed here (they need CAP_SYS_ADMIN)."""
        fd = bt.open_dir(root)
        try:
            next(bt.search(fd, 1, (bt.FS_TREE_OBJECTID, 0, 0), (bt.FS_TREE_OBJECTID, 255, 0)),
                 None)
            return True
        except PermissionError:
            return False
        finally:
            os.close(fd)

    def skip_subvol(self, sv: Subvol) -> bool:
        return sv.readonly and not self.vol.dedup_snapshots

    def walk_options(self) -> WalkOptions:
        """The volume's walk options, with skipped snapshots excluded (never descended)."""
        extra = tuple(glob.escape(os.fsdecode(sv.path)) for sv in self.subvols.values()
                      if self.skip_subvol(sv))
        self.c.add("snapshots_skipped", len(extra))
        return WalkOptions(self.vol.min_size, self.vol.exclude + extra, self.vol.cross_mounts)

    def readonly(self, dev: int, path: bytes) -> bool:
        """Whether the file at path (on device dev) lives in a read-only subvolume."""
        ro = self._ro_dev.get(dev)
        if ro is None:
            try:
                fd = bt.open_dir(os.path.dirname(path) or b"/")
            except OSError:
                return True  # unknown: treat as not writable, the safe side
            try:
                ro = bt.is_readonly(fd)
            finally:
                os.close(fd)
            self._ro_dev[dev] = ro
        return ro

    def incremental(self, store: Store, root: bytes, prev_gen: int) -> list[FileEvent]:
        """FileEvents of files changed since prev_gen (a committed transid) below root."""
        known = self.subvols
        self.subvols = visible_subvols(root)
        events: dict[bytes, FileEvent] = {}
        dirs: set[bytes] = set()
        fresh: list[bytes] = []
        for tid, sv in self.subvols.items():
            if self.skip_subvol(sv):
                continue
            if tid not in known or known[tid].path != sv.path or known[tid].readonly:
                fresh.append(sv.path)  # new, moved, or made writable: walk it whole
            elif sv.generation > prev_gen:
                self._changed_in(sv, prev_gen, root, events, dirs)
        self.c.add("subvols_searched", sum(1 for sv in self.subvols.values()
                                           if sv.generation > prev_gen))
        self._deletions(store, root, dirs, fresh)
        # A fresh subvolume that holds the volume root is walked from the root only.
        fresh = sorted({d if ix.under(d, [root]) else root for d in fresh})
        for d in fresh:
            if not any(ix.under(d, [x]) and d != x for x in fresh):
                for ev in walk([d], self.walk_options(), self.stats):
                    events[ev.path] = ev
        return list(events.values())

    def _changed_in(self, sv: Subvol, prev_gen: int, root: bytes,
                    events: dict[bytes, FileEvent], dirs: set[bytes]) -> None:
        fd = bt.open_dir(sv.path)
        try:
            for ch in bt.changed_inodes(fd, prev_gen + 1):
                self.c.add("inodes_changed")
                if ch.ino == bt.FIRST_FREE_OBJECTID:
                    if ix.under(sv.path, [root]):
                        dirs.add(sv.path)
                    continue
                if not (stat.S_ISDIR(ch.mode) or stat.S_ISREG(ch.mode)):
                    continue
                try:
                    rels = bt.inode_paths(fd, ch.ino)
                except OSError:
                    continue  # deleted since the commit
                for rel in rels:
                    p = sv.path.rstrip(b"/") + b"/" + rel
                    if not ix.under(p, [root]):
                        continue
                    if stat.S_ISDIR(ch.mode):
                        dirs.add(p)
                    else:
                        ev = self._event(p, ch.ino)
                        if ev is not None:
                            events[p] = ev
        finally:
            os.close(fd)

    def _event(self, path: bytes, ino: int) -> FileEvent | None:
        try:
            st = handles.lstat(path)  # a name BTRFS resolved is still only a label
        except handles.PathChanged as e:
            self.stats.problems.append(Problem(path, e.reason, e.strerror or str(e)))
            return None
        except OSError:
            return None
        if st.st_ino != ino or not stat.S_ISREG(st.st_mode):
            return None
        self.stats.files_seen += 1
        if st.st_size < self.vol.min_size:
            self.stats.too_small += 1
            return None
        if excluded(os.path.basename(path), path, self.vol.exclude):
            self.stats.excluded += 1
            return None
        return FileEvent.from_stat(path, st)

    def _deletions(self, store: Store, root: bytes, dirs: set[bytes],
                   fresh: list[bytes]) -> None:
        """Forget indexed paths that vanished below changed dirs; queue dirs to walk."""
        if not dirs:
            return
        populated: set[bytes] = set()
        gone: list[bytes] = []
        exists: dict[bytes, bool] = {}
        for path, dev, ino in store.paths_below(root):
            if self._vanished(path, dev, ino, root, dirs, populated, exists):
                gone.append(path)
        self.forgotten = store.forget_paths(gone)
        fresh.extend(d for d in dirs if d not in populated and handles.is_dir(d))

    @staticmethod
    def _vanished(path: bytes, dev: int, ino: int, root: bytes, dirs: set[bytes],
                  populated: set[bytes], exists: dict[bytes, bool]) -> bool:
        a = path
        while len(a) > len(root):
            parent = os.path.dirname(a)
            if parent in dirs:
                populated.add(parent)
                if a is path:
                    try:
                        st = handles.lstat(path)
                    except OSError:
                        return True
                    if (st.st_dev, st.st_ino) != (dev, ino):
                        return True
                else:
                    if a not in exists:
                        exists[a] = handles.is_dir(a)
                    if not exists[a]:
                        return True
            a = parent
        return False


def full_walk(finder: ChangeFinder, root: bytes) -> Iterator[FileEvent]:
    """Every file below root, skipping read-only snapshots unless dedup_snapshots."""
    try:
        finder.subvols = visible_subvols(root)
    except PermissionError:  # not root: snapshots are still never destinations
        finder.subvols = {}
    return walk([root], finder.walk_options(), finder.stats)
