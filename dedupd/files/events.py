"""The records a walk or a change source hands to the index, and what it could not use."""

from __future__ import annotations

import os

from dedupd.tuples import NamedTuple  # typing's, without typing: see there

# No dataclasses in this module: it is imported before `dedupd scan` forks its walk,
# where the dataclasses module (with inspect, ast and dis) is 5 ms of every rescan.

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


class Ident(NamedTuple):
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


class Problem(NamedTuple):
    """A file or directory the walk or the hasher could not use, and why."""

    path: bytes
    reason: str  # short tag: unreadable, vanished, changed, error
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"path": os.fsdecode(self.path), "reason": self.reason, "detail": self.detail}


class WalkStats:
    """Counters of one walk (mutable: the walk owns it while running), and its
    problems. Equal when all of them are."""

    COUNTERS = ("files_seen", "dirs_seen", "symlinks", "special_files", "too_small",
                "excluded", "mount_points_skipped")
    __slots__ = (*COUNTERS, "problems")

    def __init__(self, files_seen: int = 0, dirs_seen: int = 0, symlinks: int = 0,
                 special_files: int = 0, too_small: int = 0, excluded: int = 0,
                 mount_points_skipped: int = 0, problems: list[Problem] | None = None) -> None:
        self.files_seen, self.dirs_seen, self.symlinks = files_seen, dirs_seen, symlinks
        self.special_files, self.too_small, self.excluded = special_files, too_small, excluded
        self.mount_points_skipped = mount_points_skipped
        self.problems: list[Problem] = [] if problems is None else problems

    def _values(self) -> tuple[object, ...]:
        return (*(getattr(self, k) for k in self.COUNTERS), self.problems)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WalkStats) and self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return "WalkStats(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in
                                        (*self.COUNTERS, "problems")) + ")"
