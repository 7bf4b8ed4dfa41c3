"""The hashing rule, stated once: small files whole, else head first, whole only
when heads collide.

A `SizeGroup` holds the settled members of one size met so far and answers,
as members arrive and reads complete, which reads the rule asks for next. It
reads nothing itself: an engine (dedupd.hashing.engine) schedules the reads, in
whatever order suits the disk, and reports each outcome back with `learn`. The
same object serves a complete size group from the index (all members at once)
and the scan's early hashing (members one batch at a time): a size met once is
never read; when a second member comes, both are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from dedupd.files.events import Problem
from dedupd.hashing.read import WHOLE_READ, Got, with_hashes
from dedupd.hashing.stats import HashStats
from dedupd.index.store import HashUpdate, IndexedFile

Key = tuple[int, int]
_new = tuple.__new__  # a NamedTuple's own __new__ is a Python function: 3x the cost
Read = tuple[IndexedFile, bool]  # (file, whole?)
Sink = tuple[list[HashUpdate], list[Key]]  # updates learnt, inodes gone: in order


@dataclass(frozen=True)
class Group:
    """Files with one full hash, to dedupe together, and the new hashes of its members
    (whoever acts on the group writes them, in order with its own writes)."""

    size: int
    files: tuple[IndexedFile, ...]
    full: bytes
    updates: tuple[HashUpdate, ...] = ()


@dataclass(frozen=True)
class Hashed:
    """One size group, hashed: new hashes of files in no group, inodes that vanished
    or changed (the index forgets them), the groups, the group's counters, and
    every settled member still there (unreadable ones too), with its hashes as known."""

    size: int
    updates: tuple[HashUpdate, ...]
    gone: tuple[Key, ...]
    groups: tuple[Group, ...]
    stats: HashStats = field(default_factory=HashStats)
    files: tuple[IndexedFile, ...] = ()


@dataclass
class SizeGroup:
    size: int
    stat_checked: bool = False  # updates carry the stat they were read at
    stats: HashStats = field(default_factory=HashStats)
    files: dict[Key, IndexedFile] = field(default_factory=dict)
    heads: dict[int, list[Key]] = field(default_factory=lambda: defaultdict(list))
    updates: dict[Key, HashUpdate] = field(default_factory=dict)
    failed: set[Key] = field(default_factory=set)
    gone: list[Key] = field(default_factory=list)
    counted: set[Key] = field(default_factory=set)
    outstanding: int = 0  # reads handed out, not learnt yet
    # the scan's Feeder: each update learnt and inode gone goes to its lists (it
    # hands them on batch by batch) instead of into `updates` and `gone` for result()
    sink: Sink | None = None
    # Large members without a head are read whole at once, side by side (the hardlink
    # path's together reader: a member that differs from every other stops being read
    # there, with its head, at the chunk where it parts; issue 16). Members read whole
    # so have their heads noted when read, not before, as a head read's would be.
    whole_first: bool = False
    small: bool = field(init=False)  # read whole in one read (the first)
    read_first: set[Key] = field(default_factory=set)  # read whole by whole_first

    def __post_init__(self) -> None:
        self.small = self.size <= WHOLE_READ

    # The methods below run once or twice per file of a tree: keys are built once
    # per call, not through IndexedFile.key at every use.

    def add(self, f: IndexedFile) -> list[Read]:
        """A settled member (or another name of one already held); the reads now due."""
        key = (f[0], f[1])
        files = self.files
        known = files.get(key)
        if known is not None:
            if _stat(known) != _stat(f) and key not in self.failed:
                # written to between two of its names: leave it for a later pass
                self.failed.add(key)
                self.stats.problems.append(Problem(f.path, "changed", "changed during the scan"))
            files[key] = known._replace(paths=tuple(sorted({*known.paths, *f.paths})))
            return []
        files[key] = f
        n = len(files)
        if n > 2:
            if self.small:  # the common case, inline: one whole read, counted once
                if f[6] is not None:
                    return []
                self.outstanding += 1
                self.stats.files_hashed += 1
                self.counted.add(key)
                return [(f, True)]
            return self._first_read(f, key)
        if n < 2:
            return []
        return [r for k, m in files.items() for r in self._first_read(m, k)]

    def _first_read(self, m: IndexedFile, key: Key) -> list[Read]:
        if self.small:
            return [] if m.full is not None else [self._hand_out(m, key, True)]
        if m.head is None:
            if self.whole_first:
                self.read_first.add(key)
                return [self._hand_out(m, key, True)]
            return [self._hand_out(m, key, False)]
        return self._note_head(m.head, key)

    def _note_head(self, head: int, key: Key) -> list[Read]:
        """A large member's head is known: when it matches another's, both are read whole."""
        same = self.heads[head]
        same.append(key)
        if len(same) < 2:
            return []
        due = same if len(same) == 2 else same[-1:]
        return [self._hand_out(self.files[k], k, True) for k in due
                if self.files[k].full is None and k not in self.failed]

    def _hand_out(self, m: IndexedFile, key: Key, whole: bool) -> Read:
        self.outstanding += 1
        if key not in self.counted:
            self.counted.add(key)
            self.stats.files_hashed += 1
        return (m, whole)

    def learn(self, f: IndexedFile, got: Got | Problem) -> list[Read]:
        """The outcome of a read this group handed out; the reads it makes due."""
        self.outstanding -= 1
        key = (f[0], f[1])
        if type(got) is not Got:
            assert isinstance(got, Problem)
            self.stats.problems.append(got)
            self.failed.add(key)
            if got.reason in ("changed", "vanished"):
                (self.gone if self.sink is None else self.sink[1]).append(key)
            return []
        st = self.stats
        nread, full = got[2], got[1]
        st.bytes_read += nread
        if full is not None:
            st.full_hashes += 1
            st.bytes_hashed += nread
        # the latest record of the inode: another name may have come meanwhile
        m = self.files[key] = with_hashes(self.files[key], got[0], full)
        u = _new(HashUpdate, (m[0], m[1], m[5], m[6],
                              (m[2], m[3], m[4]) if self.stat_checked else None))
        if self.sink is None:
            self.updates[key] = u
        else:
            self.sink[0].append(u)
        if self.small or (full is not None and key not in self.read_first):
            return []
        # a head read, or a whole read at once (whole_first) whose head is known only
        # now: another member with that head is due for its whole read
        self.read_first.discard(key)
        return self._note_head(got[0], key)

    def result(self) -> Hashed:
        """The groups (2+ inodes with one full hash) and the rest, once nothing is
        outstanding; the group may take more members and give a later result."""
        groups = self.groups()
        grouped = {f.key for g in groups for f in g.files}
        loose = tuple(u for k, u in self.updates.items() if k not in grouped)
        gone = set(self.gone)
        kept = tuple(m for k, m in self.files.items() if k not in gone)
        return Hashed(self.size, loose, tuple(self.gone), groups, self.stats, kept)

    def groups(self, updates: bool = True) -> tuple[Group, ...]:
        """result()'s groups alone (updates=False: without their members' new hashes,
        for a caller that wrote them already, as the scan's feeders do)."""
        fulls: dict[bytes, list[IndexedFile]] = defaultdict(list)
        failed, small, heads = self.failed, self.small, self.heads
        for key, m in self.files.items():
            full, head = m[6], m[5]
            # a large member counts once its head matched another's (the rule's
            # condition for reading it whole), not for a full hash the index had
            if full is not None and key not in failed and (
                    small or (head is not None and len(heads.get(head, ())) >= 2)):
                fulls[full].append(m)
        new = self.updates if updates else {}
        return tuple(
            Group(self.size, tuple(g), full,
                  tuple(new[k] for f in g if (k := (f[0], f[1])) in new))
            for full, g in fulls.items() if len(g) >= 2)


def _stat(f: IndexedFile) -> tuple[int, int, int]:
    return (f.size, f.mtime_ns, f.ctime_ns)


def settled_apart(files: Sequence[IndexedFile]) -> bool:
    """Whether the rule finds no group among one size's members without reading any:
    each has the hash the rule compares first known (small: its whole; large: its
    head) and no two inodes share it. Then hashing them would read nothing, learn
    nothing and group nothing (a caller may pass them by: issue 16, a re-run's size
    groups from the index)."""
    small = bool(files) and files[0].size <= WHOLE_READ
    seen: dict[int | bytes, Key] = {}
    for f in files:
        h = f.full if small else f.head
        if h is None or seen.setdefault(h, f.key) != f.key:
            return False  # to be read, or shared with another inode
    return True
