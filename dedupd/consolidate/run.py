"""One consolidation run: index -> group -> plan -> copy/confirm -> report.

Contract: sources are only read (unless prune_sources, see archive_ops). The
archive only gains files (through fsops.copy) and, with link_duplicates, has
duplicate inodes hardlinked through the hardlink linker. Re-running is always
safe and resumes an interrupted run (journalled ops are recovered first).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from dedupd import handles
from dedupd.config import ConsolidateConfig
from dedupd.consolidate import walkfirst
from dedupd.consolidate.archive_ops import (
    OpsReport,
    link_archive_duplicates,
    prune_sources,
    recover,
)
from dedupd.consolidate.confirm import Counters
from dedupd.consolidate.execute import CopyProgress, Executor
from dedupd.consolidate.helpers import Helpers
from dedupd.consolidate.inventory import (
    Inventory,
    Progress,
    SourcePath,
    group_contents,
    index_trees,
)
from dedupd.consolidate.layout import check_layout
from dedupd.consolidate.plan import Names, Plan, make_plan, new_copy, plan_collisions
from dedupd.consolidate.roots import Roots, resolve_roots
from dedupd.dedup.journal import Journal
from dedupd.errors import TemporaryFailure
from dedupd.fsops.archive_lock import (
    Locked,
    lock_archive,
    mark_running,
    remove_stale_temps,
    was_interrupted,
)
from dedupd.index import provenance as prov
from dedupd.index.store import Store


@dataclass(frozen=True)
class Options:
    dry_run: bool = False
    progress: Progress | None = None  # (stage, done, total) while indexing and hashing
    copy_progress: CopyProgress | None = None  # (files, files_total, bytes, bytes_total)


@dataclass(frozen=True)
class Report:
    name: str
    dry_run: bool
    stats: dict[str, int | float]
    copies: tuple[dict[str, Any], ...]
    archive_duplicates: tuple[dict[str, Any], ...]
    problems: tuple[dict[str, str], ...]
    actions: tuple[dict[str, Any], ...] = ()  # hardlinks in the archive, source prunes
    refused: tuple[dict[str, str], ...] = ()  # links or prunes not done, with reasons
    recovered: tuple[dict[str, object], ...] = ()  # interrupted ops finished/rolled back

    def as_json(self) -> dict[str, Any]:
        return {"consolidation": self.name, "dry_run": self.dry_run, "stats": self.stats,
                "copies": list(self.copies),
                "archive_duplicates": list(self.archive_duplicates),
                "actions": list(self.actions), "refused": list(self.refused),
                "recovered": list(self.recovered), "problems": list(self.problems)}


@dataclass
class Left:
    """What a finished run hands to a caller that exits right after its output
    (consolidate's `left`, for cli.run, which frees nothing at its exit): the run's
    heap (index rows, plan, executor), not freed one by one (25 ms after a
    20,000-file import), and its index writer, still moving what it wrote into the
    index file (writer.py): reap() it after the output, before exiting."""

    heap: list[object] = field(default_factory=list)
    helpers: list[Helpers] = field(default_factory=list)

    def reap(self) -> None:
        for h in self.helpers:
            h.wait()
        self.helpers = []


def consolidate(store: Store, cfg: ConsolidateConfig, opts: Options,
                left: Left | None = None) -> Report:
    """Import every content of cfg.sources the archive lacks (see module docstring).

    Every path is resolved beneath the sources and the archive (handles.py): a
    symlinked directory in a source share is refused, never copied from. left: where
    a finished run's heap and helper processes go instead of being freed and waited
    for here (Left)."""
    check_layout(cfg.name, cfg.layout, cfg.undated_dir)
    roots = resolve_roots(cfg)
    # A run holds a few objects per file (index rows, plan, staged copies) and makes no
    # reference cycles: the collector's full scans of that heap only cost time (10% of
    # a 20,000-file import's CPU, perf). Refcounting frees everything as before.
    was_enabled = gc.isenabled()
    gc.disable()
    ending: list[Helpers] = []
    try:
        with handles.anchored([*roots.sources, roots.archive]):
            return _consolidate(store, cfg, opts, roots, ending, left)
    finally:
        # reaped here once the run's heap is freed, or by the caller after its output
        # (Left): meanwhile the index writer checkpoints what it wrote and closes the
        # index (writer.py), which the run's close of the index did after, alone
        if left is not None:
            left.helpers += ending
        else:
            for h in ending:
                h.wait()
        if was_enabled:
            if left is not None and left.heap:
                # made with the collector off, so all young: its first collection would
                # go through every one (65 ms after a 20,000-file import). Frozen, none
                # is scanned again; refcounting frees them when the caller drops them
                gc.freeze()
            gc.enable()


def _consolidate(store: Store, cfg: ConsolidateConfig, opts: Options, roots: Roots,
                 ending: list[Helpers], left: Left | None) -> Report:
    """consolidate()'s run; its helper processes, once finished, go to `ending`, its
    heap to `left` (consolidate)."""
    t0 = time.monotonic()
    lock = -1
    if not opts.dry_run:
        try:
            lock = lock_archive(roots.archive)
        except Locked:
            raise TemporaryFailure(f"{os.fsdecode(roots.archive)}: another dedupd is "
                                   "importing into this archive; try again later") from None
    jr = None if opts.dry_run else Journal(store)
    ops = OpsReport()
    helpers: Helpers | None = None
    try:
        if jr is not None:
            recover(jr, cfg.name, ops)  # an interrupted link or prune comes first
        # Temp files exist only if a run was interrupted: sweep only then (a whole walk).
        stale: list[bytes] = []
        interrupted = was_interrupted(roots.archive)
        if interrupted:
            stale = remove_stale_temps(roots.archive, dry_run=opts.dry_run)
        if ops.recovered or interrupted:  # what the walk forked first listed may differ
            walkfirst.drop()
        if lock >= 0:
            mark_running(lock, True)
        # the copies' helper processes, forked while the heap is small (helpers.Helpers)
        helpers = None if opts.dry_run else Helpers(store.url, roots.archive,
                                                    cfg.on_name_collision)
        inv = index_trees(store, cfg, roots, opts.progress)
        # A dry run hashes every size group: its plan lists every copy and duplicate.
        group_contents(store, inv, opts.progress, defer=not opts.dry_run)
        names = Names(inv.archive_paths)
        rows = prov.load(store, cfg.name)
        plan = make_plan(inv, cfg, rows, names, defer_names=not opts.dry_run)
        counters, confirmed = Counters(), _would_confirm(plan)
        ex: Executor | None = None
        if helpers is not None:
            ex = Executor(store, cfg.name, inv.scan_id, plan, roots.archive,
                          cfg.on_name_collision, opts.copy_progress,
                          lambda c, data: new_copy(plan, c, cfg, roots.archive, names, data),
                          helpers)
            counters = ex.run(lambda srcs: plan_collisions(plan, cfg, roots.archive,
                                                           names, srcs))
            confirmed = ex.confirmed
            # the index writer's last rows go in beside the report (below), unless a
            # step here writes the index or changes files: it must find them committed,
            # and a failed write stops the run before it
            if rows or (cfg.link_duplicates and plan.archive_dups) or cfg.prune_sources:
                counters.rows_written += helpers.finish()
            if rows:  # else every row is this run's, naming a file it found or placed
                # the names this run's rows give, not the planned ones: a copy whose
                # name appeared meanwhile was placed under a suffix
                keep = inv.archive_paths | {a for _, a in confirmed}
                prov.forget_archive_paths(store, cfg.name, keep)
        if cfg.link_duplicates and plan.archive_dups:
            link_archive_duplicates(jr, store, inv.scan_id, cfg.name, roots, plan.archive_dups,
                                    opts.dry_run, ops)
        if cfg.prune_sources:
            qdir = None if cfg.quarantine_dir is None else os.fsencode(cfg.quarantine_dir)
            prune_sources(jr, cfg.name, confirmed, qdir, opts.dry_run, ops)
        placed = {s.path: a for s, a in confirmed}  # a copy's name may not be the planned one
        report = _report(cfg, opts, inv, plan, counters, ops, len(stale),
                         time.monotonic() - t0, placed)
        if helpers is not None:  # its last rows (0 if finished above)
            report.stats["provenance_rows_written"] += helpers.finish()
            ending.append(helpers)
        if lock >= 0:
            mark_running(lock, False)  # reached only when the run finished
        if left is not None:
            left.heap += (inv, plan, names, rows, confirmed, placed, ex)
    except BaseException:
        if helpers is not None:  # (a no-op after a failed executor: it did that)
            helpers.abandon()
        raise
    finally:
        if jr is not None:
            jr.close()
        if lock >= 0:
            os.close(lock)
    return report


def _source_bytes(inv: Inventory) -> int:
    """The bytes of the distinct source inodes. An inode is in one content or one size
    group, whose files are all of one size: a group knows how many inodes it has; a
    content's paths may be several names of one inode, counted once (s.file[:2] is
    an inode's key, sliced in C)."""
    n = sum(u.size * u.inodes for u in inv.unsorted)
    for x in inv.contents:
        if len(x.sources) == 1:
            n += x.size
        elif x.sources:
            n += x.size * len({s.file[:2] for s in x.sources})
    return n


def _would_confirm(plan: Plan) -> list[tuple[SourcePath, bytes]]:
    """For a dry run: the (source, archive file) pairs a real run would confirm."""
    pairs = [(s, k.target) for k in plan.known for s in (*k.fresh, *k.check)]
    pairs += [(s, c.dest) for c in plan.copies for s in c.content.sources]
    return pairs


def _report(cfg: ConsolidateConfig, opts: Options, inv: Inventory, plan: Plan,
            c: Counters, ops: OpsReport, stale: int, seconds: float,
            placed: dict[bytes, bytes]) -> Report:
    stats: dict[str, int | float] = {
        "files_seen": inv.walk.files_seen,
        "source_paths": (sum(len(x.sources) for x in inv.contents)
                         + sum(len(u.sources) for u in inv.unsorted)),
        "source_bytes": _source_bytes(inv),
        "distinct_contents": sum(1 for x in inv.contents if x.sources) + c.contents_sorted,
        "already_in_archive": len(plan.known),
        "to_copy": len(plan.copies) + c.unnamed_failed,
        "bytes_to_copy": plan.bytes_to_copy + c.unnamed_failed_bytes,
        "files_copied": c.files_copied,
        "bytes_copied": c.bytes_copied,
        "bytes_written": c.bytes_written,
        "bytes_read": inv.hashing.bytes_read + plan.bytes_read + c.bytes_read + ops.bytes_read,
        "files_hashed": inv.hashing.files_hashed,
        "files_confirmed": c.files_confirmed,
        "files_unchanged": c.files_unchanged,
        "provenance_rows_written": c.rows_written,
        "archive_duplicate_groups": len(plan.archive_dups),
        "archive_names_linked": ops.linked,
        "bytes_reclaimed": ops.bytes_reclaimed,
        "sources_pruned": ops.pruned,
        "ops_refused": len(ops.refused),
        "ops_recovered": len(ops.recovered),
        "stale_temp_files": stale,
        "excluded": inv.walk.excluded,
        "problems": len(inv.problems) + len(plan.problems) + len(c.problems),
        "seconds": round(seconds, 3),
    }
    enc, err = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    copies: list[dict[str, Any]] = []
    for x in plan.copies:
        src = x.src.path
        # a real run lists the copies placed (and confirmed), not those that failed
        # (out of space, source changed: they are in the problems)
        if src not in placed and not opts.dry_run:
            continue
        paths = x.content.sources
        # os.fsdecode's answers, decoded in one C call each (a Python call less a path)
        copies.append({"source": src.decode(enc, err),
                       "archive": placed.get(src, x.dest).decode(enc, err),
                       "size": x.content.size, "date_from": x.date.source,
                       "duplicates": [s.path.decode(enc, err) for s in paths[1:]]
                       if len(paths) > 1 else []})  # most: no list comprehension's frame
    dups = tuple({"size": d.size, "paths": [os.fsdecode(f.paths[0]) for f in d.archive]}
                 for d in plan.archive_dups)
    problems = tuple(p.as_dict() for p in [*inv.problems, *plan.problems, *c.problems])
    return Report(cfg.name, opts.dry_run, stats, tuple(copies), dups, problems, tuple(ops.actions),
                  tuple(ops.refused), tuple(ops.recovered))
