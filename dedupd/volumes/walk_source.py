"""The full-walk change source: every file of the volume, every pass.

The change source of plain and pool volumes (a pool is walked on its
branches, not through the FUSE view, so every file shows its real device and
inode), and the fallback of the tracking sources. Unchanged files cost a stat:
the index keeps their hashes, so they are never read again.
"""

from __future__ import annotations

from collections.abc import Iterator

from dedupd.files.events import FileEvent
from dedupd.scan.walk import WalkOptions, walk
from dedupd.volumes.pipeline import Groups, PassRun


class FullWalk:
    """Walk every root; the index forgets what the walk no longer finds."""

    def __init__(self, run: PassRun, options: WalkOptions | None = None) -> None:
        self.run = run
        vol = run.vol
        self.options = options or WalkOptions(vol.min_size, vol.exclude, vol.cross_mounts)

    def begin(self) -> None:
        """Nothing to fix: a walk sees the tree as it is."""

    def open_scan(self) -> int:
        return self.run.store.begin_scan(self.run.roots)

    def events(self) -> Iterator[FileEvent]:
        return walk(self.run.roots, self.options, self.run.walk_stats)

    def progress(self, batch: list[FileEvent]) -> str:
        return f"{self.run.walk_stats.files_seen} files"

    def close_scan(self, scan_id: int) -> Groups:
        r = self.run
        r.c.add("files_forgotten", r.store.finish_scan(scan_id, r.roots))
        return r.store.candidate_groups(scan_id, r.vol.min_size)

    def save(self) -> None:
        """Nothing to remember: the next pass walks again."""
