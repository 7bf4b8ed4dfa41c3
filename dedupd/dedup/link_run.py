"""The state of one hardlink run (dedup/hardlink.py plans it, dedup/link_exec.py
carries out its batch): the policy, the result, the names waiting for the batch,
and the identities our own links moved (refresh/accept).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dedupd import dirhandles, handles
from dedupd.dedup import journal as J
from dedupd.dedup.together import Proofs
from dedupd.dedup.verify import Refused
from dedupd.files.events import Ident
from dedupd.index.store import IndexedFile


@dataclass(frozen=True)
class LinkPolicy:
    """How a group is linked.

    scope: the volume's roots; an inode with names outside them (or names the
    scan did not see) is never touched. primary_paths: a file below one of
    them is kept; two such files are linked only if link_primary_pairs.
    quarantine_dir: replaced copies keep a name there (same filesystem).
    """

    volume: str
    scope: tuple[bytes, ...]
    primary_paths: tuple[bytes, ...] = ()
    link_primary_pairs: bool = False
    quarantine_dir: bytes | None = None


@dataclass(frozen=True)
class LinkResult:
    """What link_group did (or, dry run, would do).

    actions: one dict per name replaced (result done|would|rolled_back);
    refused: one dict per name left alone, with its reason; counts: by reason.
    bytes_reclaimed counts inodes whose last name was replaced (their blocks
    are freed unless a process still holds them open or a snapshot pins them).
    restat: (before, after) of every inode whose ctime only our own links moved,
    in order, so the index can take the new ctime instead of reading it again.
    """

    actions: tuple[dict[str, Any], ...] = ()
    refused: tuple[dict[str, str], ...] = ()
    linked: int = 0
    bytes_reclaimed: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    restat: tuple[tuple[Ident, Ident], ...] = ()


def show(p: bytes) -> str:
    return os.fsdecode(p)


@dataclass(frozen=True)
class Planned:
    """A name that passed every check and waits for its batch: replace `path` (a name
    of f) by a link to keep; `rest` are f's later names (to refresh its identity)."""

    keep: IndexedFile
    f: IndexedFile
    path: bytes
    freed: bool
    rest: tuple[bytes, ...]


class LinkRun:
    """Accumulates the outcome of a batch of groups (mutable; link_groups and the
    cross-drive linker each own one for the length of a call)."""

    def __init__(self, journal: J.Journal | None, policy: LinkPolicy, dry_run: bool) -> None:
        self.journal, self.policy, self.dry_run = journal, policy, dry_run
        self.actions: list[dict[str, Any]] = []
        self.refused: list[dict[str, str]] = []
        self.counts: Counter[str] = Counter()
        self.linked = 0
        self.reclaimed = 0
        self.ident: dict[tuple[int, int], Ident] = {}
        self.restat: list[tuple[Ident, Ident]] = []
        # Final states of this group's ops, written in one commit at the end:
        # until then recovery would decide them from the inodes anyway.
        self.marks: list[tuple[int, str, str | None]] = []
        self.planned: list[Planned] = []  # checked names waiting for the batch
        self.proofs: Proofs | None = None  # equal bytes already seen (dedup/together.py)
        # link_groups' directory handles, each directory resolved once per batch
        # (None: every name resolves its own, as crossdrive's callers do)
        self.dirs: dirhandles.Dirs | None = None

    def parent(self, path: bytes) -> handles.Parent:
        """path's directory handle and final name (close it after use)."""
        return self.dirs.parent(path) if self.dirs is not None else handles.Parent(path)

    def lstat(self, path: bytes) -> os.stat_result:
        return self.dirs.lstat(path) if self.dirs is not None else handles.lstat(path)

    def mark(self, op: int, state: str, reason: str | None = None) -> None:
        self.marks.append((op, state, reason))

    def flush(self) -> None:
        if self.journal is not None and self.marks:
            self.journal.set_many(self.marks)
        self.marks = []

    def refuse(self, path: bytes, r: Refused) -> None:
        self.refused.append({"path": show(path), "reason": r.reason, "detail": r.detail})
        self.counts[r.reason] += 1

    def result(self) -> LinkResult:
        return LinkResult(tuple(self.actions), tuple(self.refused), self.linked,
                          self.reclaimed, dict(self.counts), tuple(self.restat))


def refresh(run: LinkRun, key: tuple[int, int], path: bytes) -> bool:
    """After our own link changes, accept the new ctime if nothing else moved."""
    try:
        st = run.lstat(path)
    except OSError:
        return False
    return accept(run, key, st)


def accept(run: LinkRun, key: tuple[int, int], st: os.stat_result) -> bool:
    """refresh() on a stat already taken (through the caller's handle)."""
    old = run.ident[key]
    if old.matches(st, ctime=False):
        run.ident[key] = Ident.of(st)
        if st.st_ctime_ns != old.ctime_ns:
            run.restat.append((old, run.ident[key]))
        return True
    return False


def action(keep: bytes, dup: bytes, size: int, result: str, op: int | None = None,
            reason: str = "") -> dict[str, Any]:
    a: dict[str, Any] = {"action": "hardlink", "keep": show(keep), "replace": show(dup),
                         "paths": [show(keep), show(dup)], "size": size, "result": result}
    if op is not None:
        a["op"] = op
    if reason:
        a["reason"] = reason
    return a
