"""The answer kept for a scan's roots and options (dedupd/index/answers.py), and the
early hashing a scan starts unless that answer is likely to be reported."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dedupd.hashing.stats import HashStats, Stability
from dedupd.index import answers
from dedupd.index.store import IndexedFile, Store
from dedupd.output import json_text
from dedupd.scan.groups import DupGroup, dup_groups, group_json

if TYPE_CHECKING:
    from dedupd.scan.prehash import EarlyHashing
    from dedupd.scan.scanner import ScanOptions


class NoEarlyHashing:
    """The early hashing of a rescan whose kept answer is likely to hold: none. No
    feeder is forked nor the hashing engine imported for a tree that lists as it
    did; the files such a rescan does record are hashed after the walk, from the
    index's size groups (find_groups), as when the feeders let go."""

    files = 0

    def __init__(self) -> None:
        self.stats = HashStats()

    def put(self, files: Sequence[IndexedFile]) -> None:
        """Nothing held: what was recorded is in the index, read after the walk."""

    def close(self) -> None:
        return None


def early_hashing(store: Store, stability: Stability, answer: Answer
                   ) -> EarlyHashing | NoEarlyHashing:
    """Feeders (forked now: before any thread of ours), unless the kept answer is
    likely to be reported."""
    if answer.likely():
        return NoEarlyHashing()
    from dedupd.scan.prehash import EarlyHashing
    return EarlyHashing(store, stability)


class Answer:
    """The answer kept for this scan's roots and options (dedupd/index/answers.py),
    as it was when the scan began."""

    def __init__(self, store: Store, norm: Sequence[bytes], opts: ScanOptions,
                 json_groups: bool = False) -> None:
        self.store, self.json_groups = store, json_groups
        self.key = answers.key(norm, (opts.min_size, opts.exclude, opts.cross_mounts,
                                      opts.settle_seconds, opts.max_backoff_seconds))
        self.since = answers.epoch(store)
        self.kept = answers.kept(store, self.key) if self.since is not None else None
        self.groups: tuple[DupGroup, ...] | None = None
        self.text: str | None = None  # the groups' JSON (json_groups)

    def unpack(self) -> None:
        """Unpack the kept answer (read its members' inode rows) into its groups ahead
        of reuse(), beside the walk; the scan writes nothing when it is reported, so
        what is read during the walk holds."""
        with contextlib.suppress(Exception):  # read again in reuse(), if needed
            if self.kept is not None:
                self.groups = dup_groups(answers.unpack(self.store, self.kept.answer))
            if self.groups is not None and self.json_groups:
                self.text = json_text([group_json(g) for g in self.groups])

    def likely(self) -> bool:
        """Whether the kept answer is still good, should the tree list the same."""
        return self.kept is not None and self.kept.epoch == self.since

    def reuse(self, fp: bytes | None) -> tuple[DupGroup, ...] | None:
        """The kept answer, if the walk's fingerprint is its and no hash moved since."""
        if fp is None or self.kept is None or fp != self.kept.fingerprint or \
                answers.epoch(self.store) != self.kept.epoch:
            return None
        if self.groups is not None:
            return self.groups
        return dup_groups(answers.unpack(self.store, self.kept.answer))

    def keep(self, fp: bytes, groups: Sequence[DupGroup]) -> None:
        if self.since is not None:
            answers.keep(self.store, self.key, fp, self.since, [(g.size, g.files) for g in groups])

