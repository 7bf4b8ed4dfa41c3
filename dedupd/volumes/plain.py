"""Kind "plain" (any POSIX filesystem: ext4, tmpfs, ...): dedupe by hardlinks.

The pass first resolves unfinished journal operations of the volume (recovery
comes before anything else), then walks, hashes and links each group through
dedup/hardlink.py. It only describes what it would do (exact actions, as text
or --json) unless the volume is in mode "apply" and --dry-run is not given.
ZFS volumes (volumes/zfs.py) reuse this pass with their own change tracking.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from dedupd.config import VolumeConfig
from dedupd.dedup.hardlink import LinkPolicy, LinkResult, link_group
from dedupd.dedup.journal import Journal
from dedupd.dedup.lock import lock_root, volume_lock
from dedupd.dedup.recovery import recover_all
from dedupd.dedup.verify import under
from dedupd.fsops.link import is_temp_name, purge_quarantine
from dedupd.index.store import Store
from dedupd.scan.events import FileEvent
from dedupd.scan.scanner import DupGroup
from dedupd.volumes import PassOptions, Step, register
from dedupd.volumes._base import ScanPass


class LinkPass(ScanPass):
    """A ScanPass whose act() links duplicates; subclasses choose the linker."""

    def __init__(self, vol: VolumeConfig, store: Store, opts: PassOptions) -> None:
        super().__init__(vol, store, opts)
        self.dry = opts.dry_run or not vol.apply
        self.journal = Journal(store)

    def steps(self) -> Iterator[Step]:
        try:
            with volume_lock(self.lock_root()):
                yield from self.prepare()
                yield from super().steps()
        finally:
            self.journal.close()

    def lock_root(self) -> bytes:
        return lock_root(self.vol.kind, self.vol.path, self.vol.branches)

    def prepare(self) -> Iterator[Step]:
        """Recovery of this volume's unfinished ops, then quarantine expiry."""
        for r in recover_all(self.journal, self.vol.name, dry_run=self.dry):
            self.c.add("recovered" if not self.dry else "recover_pending")
            self.actions.append({"action": "recover", **r.as_json(), "paths": []})
        if not self.dry:
            for q in self.quarantine_dirs():
                self.c.add("quarantine_purged", purge_quarantine(
                    q, self.vol.quarantine_days * 86400, time.time()))
        yield Step("idle", "recovered")

    def quarantine_dirs(self) -> list[bytes]:
        q = self.vol.quarantine_dir
        return [] if q is None else [os.fsencode(q)]

    def changed_files(self) -> Iterator[FileEvent]:
        return self.without_own(super().changed_files())

    def without_own(self, events: Iterator[FileEvent]) -> Iterator[FileEvent]:
        """Events minus our own temporary names and quarantined copies."""
        qdirs = tuple(self.quarantine_dirs())
        for ev in events:
            if is_temp_name(ev.path) or (qdirs and under(ev.path, qdirs)):
                self.c.add("own_files_skipped")
                continue
            yield ev

    def absorb(self, res: LinkResult) -> None:
        self.c.add("tries", len(res.actions) + len(res.refused))
        self.c.add("hits", res.linked if not self.dry else len(res.actions))
        for reason, n in res.counts.items():
            self.c.add(f"skips_{reason}", n)
        self.actions.extend(res.actions)
        self.problems.extend(res.refused)
        self.bytes_reclaimed += res.bytes_reclaimed
        self.store.accept_own_ctimes(res.restat)


class PlainPass(LinkPass):
    """Hardlink dedupe inside one filesystem tree."""

    def policy(self) -> LinkPolicy:
        q = self.vol.quarantine_dir
        return LinkPolicy(self.vol.name, tuple(self.roots),
                          tuple(os.fsencode(p) for p in self.vol.primary_paths),
                          self.vol.link_primary_pairs, None if q is None else os.fsencode(q))

    def act(self, group: DupGroup) -> Iterator[Step]:
        res = link_group(None if self.dry else self.journal, group, self.policy(), self.dry)
        self.absorb(res)
        yield Step("deduping", f"{len(group.files)} files of {group.size} bytes")


register("plain")(PlainPass)
