"""The records a walk or a change source hands to the index, and what it could not use."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple

# the device of a known directory without a file of its own (Store.known_digests):
# its digest alone decides whether the walk skips it, as it has nothing to record.
# Here, not in the index: the walk is forked before the index (SQLite) is imported
NO_DEV = -1


class FileEvent(NamedTuple):
    """One regular file as the walk saw it. Paths are bytes: names need not be UTF-8.

    A NamedTuple, not a frozen dataclass: one is made per file of a tree in the
    walk, and again where its batch is received, and a dataclass of ten frozen
    fields costs 1.2 us to build against 0.3 (as immutable, compared by value)."""

    path: bytes
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int
    uid: int
    gid: int
    nlink: int

    @classmethod
    def from_stat(cls, path: bytes, st: os.stat_result) -> FileEvent:
        return cls(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                   st.st_mode, st.st_uid, st.st_gid, st.st_nlink)

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


@dataclass(frozen=True, slots=True)
class Ident:
    """What must not have moved since a file was hashed (borg's stat_update_check):
    the same inode, size, mtime and ctime."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Ident:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def matches(self, st: os.stat_result, *, ctime: bool = True) -> bool:
        same = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            self.dev, self.ino, self.size, self.mtime_ns)
        return same and (not ctime or st.st_ctime_ns == self.ctime_ns)


@dataclass(frozen=True, slots=True)
class Problem:
    """A file or directory the walk or the hasher could not use, and why."""

    path: bytes
    reason: str  # short tag: unreadable, vanished, changed, error

    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"path": os.fsdecode(self.path), "reason": self.reason, "detail": self.detail}


@dataclass
class WalkStats:
    """Counters of one walk (mutable: the walk owns it while running)."""

    files_seen: int = 0
    dirs_seen: int = 0
    symlinks: int = 0
    special_files: int = 0
    too_small: int = 0
    excluded: int = 0
    mount_points_skipped: int = 0
    problems: list[Problem] = field(default_factory=list)
