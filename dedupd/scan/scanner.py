"""One scan: walk -> index -> size-matched hashing -> duplicate groups.

This is the whole pipeline behind `dedupd scan`; volume workers reuse its
pieces. Memory stays bounded: events are recorded in batches and hashing goes
one size group at a time.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dedupd import forkpipe, handles
from dedupd.files.events import FileEvent, Problem, WalkStats
from dedupd.hashing.stats import HashStats, Stability
from dedupd.index import answers
from dedupd.index.scanrow import ScanRow, id_of
from dedupd.index.store import IndexedFile, Store
from dedupd.output import human_bytes, json_text
from dedupd.progress import Progress
from dedupd.queuethread import QueueThread
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
    from dedupd.scan.prehash import EarlyHashing

WALK_PROC = True  # the walk in a process of its own (dedupd.scan.walkproc)


# NamedTuples, not frozen dataclasses (as immutable, compared by value): an unchanged
# rescan then never imports the dataclasses module (inspect, ast, dis: ~10 ms of its
# CPU with the classes built; tests/unit/test_scan_startup.py)
class DupGroup(NamedTuple):
    """Files with identical content: one entry per distinct inode."""

    size: int
    files: tuple[IndexedFile, ...]

    @property
    def wasted(self) -> int:
        return self.size * (len(self.files) - 1)


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
            "groups": [_group_json(g) for g in self.groups] if groups else None,
            "stats": self.stats,
            "problems": [p.as_dict() for p in self.problems],
        }


# os.fsdecode's own encoding and errors, without its per-call checks (a report of
# thousands of paths)
_FS_ENC, _FS_ERR = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _group_json(g: DupGroup) -> dict[str, Any]:
    files = g.files
    doc: dict[str, Any] = {"size": g.size,
                           "paths": [f.paths[0].decode(_FS_ENC, _FS_ERR) for f in files]}
    if hardlinks := [p.decode(_FS_ENC, _FS_ERR) for f in files for p in f.paths[1:]]:
        doc["hardlinks"] = hardlinks
    return doc


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
    answer = _Answer(store, norm, opts, json_groups)
    # both fork: before any thread of ours starts
    if walking is not None:
        walker: ForkedWalk | None = walking
        walking.start(known)
    else:
        walker = ForkedWalk(norm, wopts, RECORD_BATCH, known,
                            RESCAN_WALKERS if known else 1) if WALK_PROC else None
    row = ScanRow(store, norm)
    pre = _early_hashing(store, stability, answer)
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
                            _hashed_apart(under, ready))
        groups = tuple(sorted((*found, *_sorted(ready)),
                              key=lambda g: (-g.wasted, g.files[0].path)))
    elif early is None:  # the feeders let go: the index's size groups it is
        store.mark_inodes_seen(row.id)
        groups = find_groups(store, row, opts, hstats, progress)
    else:
        groups = _sorted(early)
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


def _early_hashing(store: Store, stability: Stability, answer: _Answer
                   ) -> EarlyHashing | NoEarlyHashing:
    """Feeders (forked now: before any thread of ours), unless the kept answer is
    likely to be reported."""
    if answer.likely():
        return NoEarlyHashing()
    from dedupd.scan.prehash import EarlyHashing
    return EarlyHashing(store, stability)


class _Answer:
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
                self.groups = _dup_groups(answers.unpack(self.store, self.kept.answer))
            if self.groups is not None and self.json_groups:
                self.text = json_text([_group_json(g) for g in self.groups])

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
        return _dup_groups(answers.unpack(self.store, self.kept.answer))

    def keep(self, fp: bytes, groups: Sequence[DupGroup]) -> None:
        if self.since is not None:
            answers.keep(self.store, self.key, fp, self.since, [(g.size, g.files) for g in groups])


def _dup_groups(got: list[tuple[int, list[IndexedFile]]] | None
                ) -> tuple[DupGroup, ...] | None:
    return None if got is None else tuple(DupGroup(n, tuple(fs)) for n, fs in got)


class Recorder:
    """Records walk batches in a thread of its own, so that the index's work
    (SQLite and psycopg release the GIL) overlaps the walk's system calls.

    At most two batches wait in the queue; an error in the writer (or in the
    sink) is raised again in the walking thread (at the next put or at exit).
    """

    def __init__(self, store: Store, scan: int | ScanRow,
                 sink: Callable[[Sequence[IndexedFile]], None] | None = None,
                 touch_inodes: bool = True) -> None:
        self.store, self.scan, self.sink = store, scan, sink
        self.touch_inodes = touch_inodes
        self.new = self.changed = self.unchanged = 0
        self.events = 0  # files recorded (not in a directory the walk skipped)
        # (path, digest) of every directory listed, for answers.fingerprint; None
        # when one had no digest, or past AHEAD_MAX_DIRS (no answer kept)
        self.listed: list[tuple[bytes, bytes]] | None = []
        self.same: list[bytes] = []  # directories the walk skipped (listing unchanged)

    def __enter__(self) -> Recorder:
        self.thread: QueueThread[list[Any]] = QueueThread(self._record, "record", 2)
        return self

    def call(self, job: Callable[[], None]) -> None:
        """Run job in the record thread, in turn with the batches (its connection)."""
        self.thread.put(job)  # type: ignore[arg-type]

    def put(self, batch: list[Any]) -> None:
        """A batch of FileEvents, with DirListed items from walk_listed."""
        self.thread.put(batch)

    def __exit__(self, *exc: object) -> None:
        self.thread.close(raise_error=exc[0] is None)

    def _record(self, batch: list[Any] | Callable[[], None]) -> None:
        if callable(batch):
            batch()
            return
        files: list[FileEvent] = []
        listed: list[DirListed] = []
        if DirListed not in set(map(type, batch)):  # files only (a first scan's): in C
            files = batch
        else:
            for e in batch:  # this loop runs once per file of a tree
                (listed if type(e) is DirListed else files).append(e)
        digests = [(d.path, d.digest) for d in listed if d.digest and not d.same]
        if self.listed is not None:
            self.listed += [(d.path, d.digest) for d in listed]
            if len(self.listed) > AHEAD_MAX_DIRS or any(not d.digest for d in listed):
                self.listed = None
        self.events += len(files)
        for d in listed:
            if d.same:
                self.same.append(d.path)
                self.unchanged += d.files
        if not files and not digests:  # directories skipped: nothing to write
            return
        r = self.store.record(id_of(self.scan), files, self.touch_inodes, digests)
        self.new, self.changed = self.new + r.new, self.changed + r.changed
        self.unchanged += r.unchanged
        if self.sink is not None:
            self.sink(r.files)


def _path(f: IndexedFile) -> bytes:
    return f.path


AHEAD_MAX_DIRS = 50_000  # a rescan of more directories reads its groups after the walk
AHEAD_MAX_FILES = 100_000  # files of groups held in memory when read beside the walk


class GroupsAhead:
    """Store.groups_under(roots), read in a thread of its own (its own connection)
    while a rescan's walk runs: what the scan reports when the walk found every
    directory unchanged, without waiting for the index after the walk. result():
    the size groups, or None when they were more than AHEAD_MAX_FILES files (not
    held: read again after) or reading them failed (read again after, where an
    error is the scan's)."""

    def __init__(self, store: Store, roots: Sequence[bytes], min_size: int) -> None:
        self.groups: list[list[IndexedFile]] | None = None
        self.thread = threading.Thread(target=self._read, args=(store, roots, min_size),
                                       name="groups-ahead", daemon=True)
        self.thread.start()

    def _read(self, store: Store, roots: Sequence[bytes], min_size: int) -> None:
        held: list[list[IndexedFile]] = []
        files = 0
        with contextlib.suppress(Exception):
            groups = store.groups_under(roots, min_size)
            try:
                for g in groups:
                    held.append(g)
                    files += len(g)
                    if files > AHEAD_MAX_FILES:
                        return
                self.groups = held
            finally:  # its temporary table goes now, on this thread's connection
                getattr(groups, "close", lambda: None)()
                store.db.close()  # and the connection: no fd outlives the thread

    def result(self) -> list[list[IndexedFile]] | None:
        self.thread.join()
        return self.groups


def find_groups(store: Store, scan: int | ScanRow, opts: ScanOptions, hstats: HashStats,
                progress: Progress | None = None,
                candidates: Iterable[list[IndexedFile]] | None = None
                ) -> tuple[DupGroup, ...]:
    """Hash the size-matched candidates of a scan (by default, the index's);
    return groups, largest waste first."""
    from dedupd.hashing import Hasher, HashWriter

    engine = Hasher(Stability(opts.settle_seconds, opts.max_backoff_seconds), hstats)
    found: list[Group] = []
    writer = HashWriter(store)
    if candidates is None:
        candidates = store.candidate_groups(id_of(scan), opts.min_size)
    if progress:
        known = isinstance(candidates, list)  # from memory: the total is known
        progress.phase("hash", sum(len(g) for g in candidates) if known else None)
        files_done, read_before = 0, hstats.bytes_read
    for res in engine.run(candidates):
        writer.add(res)
        found.extend(res.groups)
        if progress:
            files_done += len(res.files) + len(res.gone)
            progress.update(files_done, hstats.bytes_read - read_before)
    writer.flush()
    return _sorted(found)


def _hashed_apart(candidates: Iterable[list[IndexedFile]], ready: list[Group]
                  ) -> Iterator[list[IndexedFile]]:
    """Size groups whose every inode has its full hash (kept by the index only while
    its stat is unchanged) are grouped here, without the hasher: an unchanged tree's
    report is the index's. The others go on to the hasher."""
    from dedupd.hashing import Group

    for files in candidates:
        if any(f.full is None for f in files):
            yield files
            continue
        by: dict[bytes, list[IndexedFile]] = {}
        for f in files:
            by.setdefault(f.full or b"", []).append(f)
        ready.extend(Group(files[0].size, tuple(v), k) for k, v in by.items() if len(v) > 1)


def _sorted(found: Iterable[Group]) -> tuple[DupGroup, ...]:
    """Groups with members by path (the same answer whichever files the index had
    hashes for), largest waste first."""
    groups = [DupGroup(g.size, tuple(sorted(g.files, key=_path))) for g in found]
    groups.sort(key=lambda g: (-g.wasted, g.files[0].path))
    return tuple(groups)
