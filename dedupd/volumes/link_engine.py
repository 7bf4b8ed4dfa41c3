"""The hardlink engines: plain and zfs volumes (one filesystem), pool volumes
(across the drives of a mergerfs pool).

Before anything else the engine resolves this volume's unfinished journal
operations (recovery) and expires old quarantined copies. Then each group of
identical files goes to dedup/hardlink.py (or, across branches,
dedup/crossdrive.py: duplicates on the kept file's branch become hardlinks,
those on other branches move onto it, link first, delete second; the pool
view keeps every path with the same bytes). An engine only describes what it
would do (exact actions) unless the volume is in mode "apply" and --dry-run
is not given.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from dedupd.dedup.journal import Journal
from dedupd.dedup.recovery import recover_all
from dedupd.dedup.verify import under
from dedupd.files.events import FileEvent
from dedupd.fsops.link import TEMP_PREFIX, is_temp_name, purge_quarantine
from dedupd.hashing import Stability
from dedupd.volumes import Step
from dedupd.volumes.pipeline import Groups, PassRun

# The linkers (hardlink.py and what it loads, crossdrive.py) are imported by the first
# batch that links: an unchanged re-run links nothing (issue 16: ~5 ms of its start).
# So are the hashing engine and the side-by-side reader (with their thread pool and
# xxhash), by the first size group that needs a read: a re-run's size groups from the
# index are mostly settled apart already (hashing.rule.settled_apart).
if TYPE_CHECKING:
    from dedupd.dedup.crossdrive import PoolPolicy
    from dedupd.dedup.hardlink import LinkResult
    from dedupd.dedup.together import Proofs
    from dedupd.hashing import HashWriter
    from dedupd.scan.scanner import DupGroup

# Names per group commit: enough to amortise its fixed costs (the PENDING and DONE
# commits, one syncfs, the index write, a resolution per directory), few enough that
# a kill -9 leaves little for recovery to decide. Measured (issue 16, 3,000 files,
# 1,639 names on ext4, 2 cores): a batch linked while the readers still hash takes
# about 2.7x its time alone (the three threads share two cores), so fewer, larger
# batches win: 512 -> 2,048 names took the run from 0.68-0.70 s to 0.59-0.61 s.
BATCH_NAMES = 2048
# Reader threads of the hasher: two reads in flight (each side-by-side read asks the
# kernel ahead for its members), not four threads taking the interpreter lock from the
# thread that links (issue 16: less CPU for the same reads on a warm cache).
READERS = 2


class HardlinkEngine:
    """Hardlink dedupe inside one filesystem tree (kinds plain and zfs)."""

    def __init__(self, run: PassRun) -> None:
        self.run = run
        self.journal = Journal(run.store)
        self.batch: list[DupGroup] = []
        self.batch_names = 0
        self.writer: HashWriter | None = None

    # Members read whole are read side by side and compared as they are hashed: the
    # linker then re-stats them instead of reading them again (issue 16). Made by
    # hash_and_act before the first group it acts on.
    proofs: Proofs

    def prepare(self) -> Iterator[Step]:
        """Recovery of this volume's unfinished ops, then quarantine expiry."""
        r = self.run
        for op in recover_all(self.journal, r.vol.name, dry_run=r.dry):
            r.c.add("recovered" if not r.dry else "recover_pending")
            r.actions.append({"action": "recover", **op.as_json(), "paths": []})
        if not r.dry:
            for q in self.quarantine_dirs():
                r.c.add("quarantine_purged", purge_quarantine(
                    q, r.vol.quarantine_days * 86400, time.time()))
        yield Step("idle", "recovered")

    def start(self) -> None:
        """Nothing to measure: linking counts what it frees."""

    def quarantine_dirs(self) -> list[bytes]:
        q = self.run.vol.quarantine_dir
        return [] if q is None else [os.fsencode(q)]

    def own(self, events: Iterator[FileEvent]) -> Iterator[FileEvent]:
        """Events minus our own temporary names and quarantined copies."""
        qdirs = tuple(self.quarantine_dirs())
        for ev in events:
            path = ev.path  # the substring test first: a C loop, no basename per file
            if (TEMP_PREFIX in path and is_temp_name(path)) or (qdirs and under(path, qdirs)):
                self.run.c.add("own_files_skipped")
                continue
            yield ev

    def hash_and_act(self, groups: Groups) -> Iterator[Step]:
        r = self.run
        stab = Stability(r.vol.settle_seconds, r.vol.max_backoff_hours * 3600)
        due = _to_hash(groups, stab)
        first = next(due, None)
        if first is None:
            return
        from dedupd.dedup.together import Proofs, Together
        from dedupd.hashing import Hasher, HashWriter

        self.proofs = Proofs()
        self.writer = writer = HashWriter(r.store)
        hasher = Hasher(stab, r.hash_stats, READERS, together=Together(self.proofs))
        for res in hasher.run(itertools.chain((first,), due)):
            writer.add(res)
            yield Step("hashing", f"size {res.size}")
            for g in res.groups:
                # imported by the first group: the scanner loads the walk process's module
                from dedupd.scan.scanner import DupGroup

                r.c.add("groups")
                yield from self.act(DupGroup(g.size, g.files))
        yield from self.link_batch()
        writer.flush()

    def act(self, group: DupGroup) -> Iterator[Step]:
        """Groups are linked in batches (group commit: one synced journal write and one
        filesystem sync per batch, issue 16); a dry run describes each group at once."""
        self.batch.append(group)
        self.batch_names += sum(len(f.paths) for f in group.files)
        if self.run.dry or self.batch_names >= BATCH_NAMES:
            yield from self.link_batch()
        else:
            yield Step("deduping", f"{len(group.files)} files of {group.size} bytes queued")

    def link_batch(self) -> Iterator[Step]:
        groups, self.batch, self.batch_names = self.batch, [], 0
        if not groups:
            return
        from dedupd.dedup.hardlink import LinkPolicy, link_groups

        r = self.run
        self.hashes_saved()
        q = r.vol.quarantine_dir
        policy = LinkPolicy(r.vol.name, tuple(r.roots),
                            tuple(os.fsencode(p) for p in r.vol.primary_paths),
                            r.vol.link_primary_pairs, None if q is None else os.fsencode(q))
        self.absorb(link_groups(None if r.dry else self.journal, groups, policy, r.dry,
                                self.proofs))
        self.proofs.forget([f.key for g in groups for f in g.files])
        yield Step("deduping", f"{len(groups)} groups")

    def hashes_saved(self) -> None:
        """Groups are acted on once the index holds their hashes (accept_own_ctimes
        updates those rows): one index write per batch, not one per group."""
        if self.writer is not None and self.writer.updates:
            self.writer.flush()

    def absorb(self, res: LinkResult) -> None:
        r = self.run
        r.c.add("tries", len(res.actions) + len(res.refused))
        r.c.add("hits", res.linked if not r.dry else len(res.actions))
        for reason, n in res.counts.items():
            r.c.add(f"skips_{reason}", n)
        r.actions.extend(res.actions)
        r.problems.extend(res.refused)
        r.bytes_reclaimed += res.bytes_reclaimed
        r.store.accept_own_ctimes(res.restat)

    def finish(self) -> None:
        """Every group is finished (and journalled) when hash_and_act() returns."""

    def after(self) -> None:
        """Nothing kept beyond the journal."""

    def close(self) -> None:
        self.journal.close()


def _to_hash(groups: Groups, stab: Stability) -> Groups:
    """The size groups hashing may find duplicates in: not those settled apart (every
    member settled, its hashes known and unlike the others'), which it would pass
    without a read, a group or a file pending."""
    from dedupd.hashing.rule import settled_apart

    now = time.time()
    for g in groups:
        if not settled_apart(g) or not all(stab.ready(f, now) for f in g):
            yield g


class CrossDriveEngine(HardlinkEngine):
    """Dedupe across the branches of a mergerfs pool (kind pool)."""

    def pool_policy(self) -> PoolPolicy:
        from dedupd.dedup.crossdrive import PoolPolicy, rel_to

        vol = self.run.vol
        root = os.fsencode(vol.pool_root or vol.path)
        q = vol.quarantine_dir
        qrel = None
        if q is not None:
            # Quarantine must stay on each copy's own drive: a pool-view path
            # becomes the same relative path on every branch.
            qb = os.fsencode(q)
            qrel = rel_to(qb, root) if qb.startswith(root.rstrip(b"/") + b"/") else \
                qb.lstrip(b"/")
        return PoolPolicy(vol.name, root, tuple(os.path.realpath(os.fsencode(b))
                                                for b in vol.branches),
                          tuple(os.fsencode(p) for p in vol.primary_paths),
                          vol.link_primary_pairs, qrel)

    def quarantine_dirs(self) -> list[bytes]:
        qrel = self.pool_policy().quarantine_rel
        return [] if qrel is None else [os.path.join(b, qrel) for b in self.run.roots]

    def act(self, group: DupGroup) -> Iterator[Step]:
        from dedupd.dedup.crossdrive import link_pool_group

        r = self.run
        self.hashes_saved()
        self.absorb(link_pool_group(None if r.dry else self.journal, group, self.pool_policy(),
                                    r.dry))
        self.proofs.forget([f.key for f in group.files])  # compared again there
        yield Step("deduping", f"{len(group.files)} files of {group.size} bytes")
