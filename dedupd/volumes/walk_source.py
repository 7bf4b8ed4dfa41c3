"""The full-walk change source: every file of the volume, every pass.

The change source of plain and pool volumes (a pool is walked on its
branches, not through the FUSE view, so every file shows its real device and
inode), and the fallback of the tracking sources. Unchanged files cost a stat:
the index keeps their hashes, so they are never read again. A directory whose
listing digest (names, inodes, sizes, mtimes, ctimes: docs/schema.md) is the
one the index stored costs no index write at all: its files are not recorded,
and the candidates come from the index's names under the roots.
"""

from __future__ import annotations

from collections.abc import Iterator

from dedupd.files.events import FileEvent
from dedupd.scan.walk import DirListed, WalkOptions, walk_listed
from dedupd.volumes.pipeline import Groups, PassRun


class FullWalk:
    """Walk every root; the index forgets what the walk no longer finds.
    Unchanged directories are skipped, unless the pass is --force-rescan."""

    def __init__(self, run: PassRun, options: WalkOptions | None = None) -> None:
        self.run = run
        vol = run.vol
        self.options = options or WalkOptions(vol.min_size, vol.exclude, vol.cross_mounts)
        self.known: dict[bytes, tuple[bytes, int]] = {}

    def begin(self) -> None:
        """Nothing to fix: a walk sees the tree as it is."""

    def open_scan(self) -> int:
        r = self.run
        scan_id = r.store.begin_scan(r.roots)
        # read after begin_scan (it revalidates the filesystems' devices), before the walk
        self.known = {} if r.opts.force_rescan else r.store.known_digests(r.roots)
        return scan_id

    def events(self) -> Iterator[FileEvent]:
        r = self.run
        listed = r.listed.append
        for ev in walk_listed(r.roots, self.options, r.walk_stats, self.known):
            if type(ev) is FileEvent:
                yield ev
            elif type(ev) is DirListed:  # after its files (no DirHeld: known is a dict)
                listed(ev)

    def progress(self, batch: list[FileEvent]) -> str:
        return f"{self.run.walk_stats.files_seen} files"

    def close_scan(self, scan_id: int) -> Groups:
        r = self.run
        if digests := r.listed_digests():  # directories listed after the last batch
            r.store.record(scan_id, [], digests=digests)
        r.c.add("files_forgotten", r.store.finish_scan(scan_id, r.roots, r.same))
        if r.same:  # the skipped directories' files were not seen by this scan
            return r.store.groups_under(r.roots, r.vol.min_size)
        return r.store.candidate_groups(scan_id, r.vol.min_size)

    def save(self) -> None:
        """Nothing to remember: the next pass walks again."""
