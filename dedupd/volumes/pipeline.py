"""The volume pass: one driver for every kind, and the table of kinds.

A pass is

    lock -> prepare (recovery) -> begin (fix the change horizon)
         -> changes -> record (index) -> hash -> act -> save state

and `Pass.steps()` is the only place that spells it out. A kind is a pairing
of a *change source* (what changed since the last pass: a full walk, BTRFS
generations, ZFS pass-snapshot diffs) with a *dedupe engine* (what to do with
a group of identical files: share extents, hardlink, link across drives),
declared in KIND_TABLE below. Both get the same PassRun: the volume, the
index, the options, and the counters, actions and problems of the pass.

Caller contract: one pass per volume at a time; steps() takes the volume
lock (dedup/lock.py, shared with `dedupd recover`) for its whole run.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from dedupd.config import VolumeConfig
from dedupd.dedup.lock import lock_root, volume_lock
from dedupd.files.counters import Counters
from dedupd.files.events import FileEvent, WalkStats
from dedupd.hashing import HashStats
from dedupd.index.store import IndexedFile, Store
from dedupd.scan.walk import RECORD_BATCH, DirListed, batches, normalize_roots
from dedupd.volumes import PassOptions, PassReport, Step

Groups = Iterator[list[IndexedFile]]


@dataclass
class PassRun:
    """What one pass shares between its change source and its engine (one pass only)."""

    vol: VolumeConfig
    store: Store
    opts: PassOptions
    c: Counters = field(default_factory=Counters)
    actions: list[dict[str, object]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    bytes_reclaimed: int = 0
    walk_stats: WalkStats = field(default_factory=WalkStats)
    hash_stats: HashStats = field(default_factory=HashStats)
    # sizes to hash again next pass although none of their files changes (files
    # still settling, files the kernel found differing); kept by sources that track
    again: set[int] = field(default_factory=set)
    full_reason: str | None = None  # why this pass walked everything (None: changes only)
    # directories a listing walk (walk_listed) finished since the last batch was
    # recorded; their digests go with the next batch (listed_digests)
    listed: list[DirListed] = field(default_factory=list)
    # directories it skipped: their listing digest was the index's (files unchanged)
    same: list[bytes] = field(default_factory=list)
    # whether a file may only be the source of a dedupe (in a read-only BTRFS
    # snapshot); the change source knows, the extent engine asks
    readonly: Callable[[IndexedFile], bool] = lambda f: False

    @property
    def dry(self) -> bool:
        """Only describe: --dry-run, or a volume not in mode "apply"."""
        return self.opts.dry_run or not self.vol.apply

    @property
    def roots(self) -> list[bytes]:
        """Where the volume's files are: its path, or a pool's branches."""
        return normalize_roots(list(self.vol.branches) if self.vol.kind == "pool"
                               else [self.vol.path])

    def listed_digests(self) -> list[tuple[bytes, bytes]]:
        """The digests of the directories listed since the last call, to store with
        the batch about to be recorded (it, or an earlier one, holds their last
        file); the unchanged ones are noted in `same` and counted instead."""
        listed = self.listed[:]
        del self.listed[:]  # in place: a walk appends to this list
        digests = []
        for d in listed:
            if d.same:
                self.same.append(d.path)
                self.c.add("files_unchanged", d.files)
                self.c.add("dirs_unchanged")
            elif d.digest:
                digests.append((d.path, d.digest))
        return digests

    def problem(self, reason: str, detail: str) -> None:
        """A problem of the volume as a whole (not of one file)."""
        self.problems.append({"path": str(self.vol.path), "reason": reason, "detail": detail})


class ChangeSource(Protocol):
    """Finds what changed since the last pass and says which size groups to hash."""

    def begin(self) -> None:
        """Fix this pass's change horizon (a BTRFS commit, a ZFS snapshot)."""

    def open_scan(self) -> int:
        """Start recording; returns the index scan id."""

    def events(self) -> Iterator[FileEvent]:
        """The files to record: every file, or only those that changed."""

    def progress(self, batch: list[FileEvent]) -> str:
        """A few words about the recording so far (a Step's detail)."""

    def close_scan(self, scan_id: int) -> Groups:
        """Finish the index scan (forget what is gone); the size groups to hash."""

    def save(self) -> None:
        """Advance the change horizon; never in dry-run (the next real pass must see
        the same changes again)."""


class Engine(Protocol):
    """Hashes size groups and dedupes the identical files it finds."""

    def prepare(self) -> Iterator[Step]:
        """Before anything else: resolve this volume's interrupted operations."""

    def start(self) -> None:
        """After the change horizon is fixed, before recording (e.g. measure free space)."""

    def own(self, events: Iterator[FileEvent]) -> Iterator[FileEvent]:
        """events without the engine's own temporary and quarantined files."""

    def hash_and_act(self, groups: Groups) -> Iterator[Step]:
        """Hash the candidates, dedupe (or describe) every group of identical files."""

    def finish(self) -> None:
        """After the last group: flush, collect counters, measure what was freed."""

    def after(self) -> None:
        """After the state is saved and the pass's counters are final."""

    def close(self) -> None:
        """Release what the engine holds (always called)."""


@dataclass(frozen=True)
class KindSpec:
    """A kind: its change source and its engine, as "module:Class" (imported on use:
    a one-shot run loads only its own kind's modules, some of which are heavy)."""

    source: str
    engine: str


KIND_TABLE: dict[str, KindSpec] = {
    "plain": KindSpec("dedupd.volumes.walk_source:FullWalk",
                      "dedupd.volumes.link_engine:HardlinkEngine"),
    "pool": KindSpec("dedupd.volumes.walk_source:FullWalk",
                     "dedupd.volumes.link_engine:CrossDriveEngine"),
    "zfs": KindSpec("dedupd.volumes.zfs:ZfsSnapshots",
                    "dedupd.volumes.link_engine:HardlinkEngine"),
    # XFS has no generation numbers: the same source walks it whole every pass.
    "btrfs": KindSpec("dedupd.volumes.btrfs:Generations",
                      "dedupd.volumes.extent_engine:ExtentEngine"),
    "xfs": KindSpec("dedupd.volumes.btrfs:Generations",
                    "dedupd.volumes.extent_engine:ExtentEngine"),
}


def _load(ref: str) -> Callable[[PassRun], object]:
    module, _, name = ref.partition(":")
    factory: Callable[[PassRun], object] = getattr(importlib.import_module(module), name)
    return factory


class Pass:
    """One pass over one volume (the VolumePass protocol). Not thread-safe."""

    def __init__(self, vol: VolumeConfig, store: Store, opts: PassOptions,
                 source: Callable[[PassRun], ChangeSource],
                 engine: Callable[[PassRun], Engine]) -> None:
        self.run = PassRun(vol, store, opts)
        self.source = source(self.run)
        self.engine = engine(self.run)
        self._t0 = time.monotonic()
        self._seconds = 0.0

    @property
    def counters(self) -> dict[str, int]:
        return self.run.c.values

    @property
    def walk_stats(self) -> WalkStats:  # live progress (stepper.live_counters)
        return self.run.walk_stats

    @property
    def hash_stats(self) -> HashStats:
        return self.run.hash_stats

    def steps(self) -> Iterator[Step]:
        vol = self.run.vol
        try:
            with volume_lock(lock_root(vol.kind, vol.path, vol.branches)):
                yield from self.engine.prepare()
                self.source.begin()
                self.engine.start()
                groups = yield from self._record()
                yield from self.engine.hash_and_act(groups)
                self.engine.finish()
                self.source.save()
                self._finish()
                self.engine.after()
        finally:
            self.engine.close()

    def _record(self) -> Generator[Step, None, Groups]:
        """Record what changed in the index; returns the size groups to hash."""
        r, src = self.run, self.source
        scan_id = src.open_scan()
        for batch in batches(self.engine.own(src.events()), RECORD_BATCH):
            done = r.store.record(scan_id, batch, digests=r.listed_digests())
            r.c.add("files_new", done.new)
            r.c.add("files_changed", done.changed)
            r.c.add("files_unchanged", done.unchanged)
            yield Step("scanning", src.progress(batch))
        r.c.add("files_seen", r.walk_stats.files_seen)
        return src.close_scan(scan_id)

    def _finish(self) -> None:
        r, hs = self.run, self.run.hash_stats
        r.c.add("files_hashed", hs.files_hashed)
        r.c.add("bytes_read", hs.bytes_read)
        r.c.add("files_pending", hs.pending)
        for p in r.walk_stats.problems + hs.problems:
            r.problems.append(p.as_dict())
            r.c.add(f"skips_{p.reason}")
        self._seconds = time.monotonic() - self._t0

    def report(self) -> PassReport:
        r, hs = self.run, self.run.hash_stats
        return PassReport(r.vol.name, r.vol.kind, r.dry, self._seconds, dict(r.c.values),
                          tuple(r.actions), tuple(r.problems), r.bytes_reclaimed,
                          r.vol.settle_seconds, hs.pending_first, hs.pending_last)


def build(vol: VolumeConfig, store: Store, opts: PassOptions) -> Pass | None:
    """The pass of vol's kind (None for a kind not in the table)."""
    spec = KIND_TABLE.get(vol.kind)
    if spec is None:
        return None
    return Pass(vol, store, opts, _load(spec.source),  # type: ignore[arg-type]
                _load(spec.engine))  # type: ignore[arg-type]
