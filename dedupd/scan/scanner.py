"""One scan: walk -> index -> size-matched hashing -> duplicate groups.

This is the whole pipeline behind `dedupd scan`; volume workers reuse its
pieces. Memory stays bounded: events are recorded in batches and hashing goes
one size group at a time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dedupd import forkpipe, handles
from dedupd.files.events import FileEvent, Problem, WalkStats
from dedupd.hashing.stats import HashStats, Stability
from dedupd.index import answers
from dedupd.index.scanrow import ScanRow
from dedupd.index.store import Store
from dedupd.output import human_bytes
from dedupd.progress import Progress
from dedupd.scan.answer import Answer, NoEarlyHashing, early_hashing
from dedupd.scan.groups import (
    AHEAD_MAX_FILES,
    DupGroup,
    GroupsAhead,
    find_groups,
    group_json,
    hashed_apart,
    sorted_groups,
)
from dedupd.scan.recorder import AHEAD_MAX_DIRS, Recorder
from dedupd.scan.walk import (
    RECORD_BATCH,
    DirListed,
    WalkOptions,
    batches,
    normalize_roots,
    walk_listed,
)
from dedupd.scan.walkproc import RESCAN_WALKERS, ForkedWalk
from dedupd.tuples import NamedTuple  # typing's class syntax, built ~10x faster (tuples.py)

if TYPE_CHECKING:  # the hashing engine is imported when a scan hashes (not a kept answer)
    from dedupd.hashing import Group

# The scan's pieces by role (re-exported: callers import them from here): groups.py
# (DupGroup, find_groups, GroupsAhead), recorder.py (Recorder), answer.py (the kept
# answer, the early hashing)
__all__ = ["AHEAD_MAX_DIRS", "AHEAD_MAX_FILES", "DupGroup", "GroupsAhead", "NoEarlyHashing",
           "Recorder", "ScanOptions", "ScanReport", "find_groups", "scan"]

WALK_PROC = True  # the walk in a process of its own (dedupd.scan.walkproc)


# NamedTuples, not frozen dataclasses (as immutable, compared by value): an unchanged
# rescan then never imports the dataclasses module (groups.DupGroup; test_scan_startup.py)
class ScanOptions(NamedTuple):
    min_size: int = 1
    exclude: tuple[str, ...] = ()
    cross_mounts: bool = False
    settle_seconds: float = 0.0
    max_backoff_seconds: float = 72 * 3600.0


class ScanReport(NamedTuple):
    scan_id: int
    roots: tuple[bytes, ...]
    groups: tuple[DupGroup, ...]
    stats: dict[str, int | float]
    problems: tuple[Problem, ...]
    # as_json()["groups"] as compact JSON text, when it was made beside the walk (a
    # kept answer reported, scan(json_groups=True)): what is left after the walk
    groups_json: str | None = None

    def as_json(self, groups: bool = True) -> dict[str, Any]:
        """The report's JSON document (groups=False: "groups" is None, for a caller
        that has them as text: groups_json)."""
        return {
            "groups": [group_json(g) for g in self.groups] if groups else None,
            "stats": self.stats,
            "problems": [p.as_dict() for p in self.problems],
        }


def scan(store: Store, roots: Sequence[str | bytes], opts: ScanOptions,
         progress: Progress | None = None, walking: ForkedWalk | None = None,
         json_groups: bool = False) -> ScanReport:
    """Index the trees under roots and return the duplicate groups among them.
    walking: their walk, started already (walkproc.ForkedWalk, later=True) with these
    roots and options; the scan gives it the known digests and closes it, and is of
    the roots it walks (walking.roots). json_groups: the report's groups_json too,
    when it can be made beside the walk.

    Every read is resolved beneath the roots (handles.py), never through a symlink."""
    # a walk started already has its roots: normalized again, a path holding a
    # symlink repointed since would name another tree than the one walked
    norm = walking.roots if walking is not None else normalize_roots(roots)
    with handles.anchored(norm, cross_mounts=opts.cross_mounts), forkpipe.rare_gc():
        try:
            return _scan(store, norm, opts, progress, walking, json_groups)
        finally:
            store.held = None  # a failed scan writes no row it held, as if killed (held.py)
            if walking is not None:
                walking.close()


def _scan(store: Store, norm: list[bytes], opts: ScanOptions,
          progress: Progress | None, walking: ForkedWalk | None,
          json_groups: bool = False) -> ScanReport:
    t0 = time.monotonic()
    # the scan's row is written at the scan's first write (ScanRow: none at all for
    # an unchanged rescan), after the walk has its digests: the first write of a
    # closed index makes and syncs its WAL, and its close checkpoints it
    store.prepare_scan(norm)
    wstats = WalkStats()
    wopts = WalkOptions(opts.min_size, opts.exclude, opts.cross_mounts)
    stability = Stability(opts.settle_seconds, opts.max_backoff_seconds)
    # Directories whose listing did not change since the last scan are skipped by
    # the walk (docs/schema.md): their files cost one digest compare, no write.
    known = store.known_digests(norm)
    answer = Answer(store, norm, opts, json_groups)
    # both fork: before any thread of ours starts
    if walking is not None:
        walker: ForkedWalk | None = walking
        walking.start(known)
    else:
        walker = ForkedWalk(norm, wopts, RECORD_BATCH, known,
                            RESCAN_WALKERS if known else 1) if WALK_PROC else None
    row = ScanRow(store, norm)
    pre = early_hashing(store, stability, answer)
    if not isinstance(pre, NoEarlyHashing):  # hashes read early go in with new rows
        store.hold_new_rows()
    # threads only after the forks above
    ahead = GroupsAhead(store, norm, opts.min_size) if walker and 0 < len(known) <= \
        AHEAD_MAX_DIRS and not answer.likely() else None
    try:
        # Groups come from the feeders' memory, so unchanged inodes need no
        # `seen` mark (one write each) unless they let go (mark_inodes_seen below).
        walked = seen = 0  # for the progress display only
        if progress:
            progress.phase("walk")
        events = walker.batches() if walker else batches(
            walk_listed(norm, wopts, wstats, known), RECORD_BATCH)
        with Recorder(store, row, pre.put, touch_inodes=False) as rec:
            if walker and answer.likely():  # while the walk runs, by the record thread
                rec.call(answer.unpack)
            for batch in events:
                rec.put(batch)
                if progress:  # bytes found, not read: a note, not the phase's bytes
                    if walker:  # counted by the walk process, on the other core
                        seen, walked = walker.files, walker.nbytes
                    else:
                        walked += sum(e.size for e in batch if isinstance(e, FileEvent))
                        seen += sum(1 if isinstance(e, FileEvent) else
                                    e.files if isinstance(e, DirListed) and e.same else 0
                                    for e in batch)
                    progress.update(seen, note=f"{human_bytes(walked)}")
        if walker:
            wstats = walker.stats
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            if ahead:
                ahead.result()
            if walker:
                walker.close()
            pre.close()  # no thread or process may outlive the scan
        raise
    if progress:  # the files handed to the feeders, done when they are
        progress.phase("hash", pre.files)
    early = pre.close()
    store.release_held(row)  # before anything reads the index's rows
    if progress and early is not None:
        progress.update(pre.files, pre.stats.bytes_read)
    new, changed, unchanged = rec.new, rec.changed, rec.unchanged
    forgotten = store.finish_scan(row, norm, rec.same, compact=False)
    hstats = HashStats()
    hstats.merge(pre.stats)
    fp = None if rec.listed is None else answers.fingerprint(rec.listed)
    # a tree listed as the kept answer's was, every directory skipped: that answer
    reused = answer.reuse(fp) if rec.same and not rec.events and not forgotten and \
        not wstats.problems else None
    if reused is not None:
        groups = reused
    elif rec.same:  # the feeders never saw the skipped directories' files
        ready: list[Group] = []
        # what was read beside the walk holds while the scan wrote no name
        held = ahead.result() if ahead and not rec.events and not forgotten else None
        under = store.groups_under(norm, opts.min_size) if held is None else held
        found = find_groups(store, row, opts, hstats, progress,
                            hashed_apart(under, ready))
        groups = tuple(sorted((*found, *sorted_groups(ready)),
                              key=lambda g: (-g.wasted, g.files[0].path)))
    elif early is None:  # the feeders let go: the index's size groups it is
        store.mark_inodes_seen(row.id)
        groups = find_groups(store, row, opts, hstats, progress)
    else:
        groups = sorted_groups(early)
    stats: dict[str, int | float] = {
        "files_seen": wstats.files_seen,
        "files_hashed": hstats.files_hashed,
        "bytes_hashed": hstats.bytes_hashed,
        "bytes_read": hstats.bytes_read,
        "groups": len(groups),
        "duplicate_files": sum(len(g.files) - 1 for g in groups),
        "duplicate_bytes": sum(g.wasted for g in groups),
        "seconds": round(time.monotonic() - t0, 3),
        "files_new": new,
        "files_changed": changed,
        "files_unchanged": unchanged,
        "files_forgotten": forgotten,
        "files_pending": hstats.pending,
        "too_small": wstats.too_small,
        "excluded": wstats.excluded,
        "symlinks": wstats.symlinks,
        "special_files": wstats.special_files,
        "mount_points_skipped": wstats.mount_points_skipped,
        "problems": len(wstats.problems) + len(hstats.problems),
    }
    problems = tuple(wstats.problems + hstats.problems)
    if reused is None and fp is not None and not problems and not hstats.pending:
        answer.keep(fp, groups)
    if store.compact_due:  # after the last write
        store.compact()
    text = answer.text if reused is not None and reused is answer.groups else None
    # 0: a scan that wrote nothing has no row (an unchanged rescan)
    return ScanReport(row.id if row.written else 0, tuple(norm), groups, stats, problems,
                      text)
