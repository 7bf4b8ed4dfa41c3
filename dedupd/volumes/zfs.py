"""Kind "zfs": hardlink dedupe with change tracking through daemon-owned snapshots.

Each pass takes a snapshot `<dataset>@dedupdpass-<UTC time>` before it looks
at anything, and, where the zfs tool has `zfs diff` (OpenZFS), lists what
changed since the last processed pass snapshot instead of walking the tree.
Where it does not (zfs-fuse), the pass falls back to the stat walk and takes no
snapshot at all. Pass snapshots other than the newest processed one are
destroyed at the end of the pass, so they never pin replaced blocks for long
(space freed by linking shows once the previous pass snapshot is released).
The prefix differs from the backup jobs' so neither touches the other's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from dedupd import proc
from dedupd.dedup.lock import volume_lock
from dedupd.index.carry import carry_forward
from dedupd.scan.events import FileEvent
from dedupd.scan.scanner import RECORD_BATCH, batches
from dedupd.scan.walk import WalkOptions, normalize_roots, walk
from dedupd.volumes import Step, register
from dedupd.volumes._base import ScanPass
from dedupd.volumes.plain import PlainPass
from dedupd.volumes.zfs_diff import DiffEntry, DiffFormatError, parse_diff

PASS_PREFIX = "dedupdpass-"


def has_diff() -> bool:
    """True when the installed zfs tool knows `zfs diff` (OpenZFS; not zfs-fuse)."""
    r = proc.run(["zfs", "diff"], check=False, timeout=30)
    err = r.stderr.lower()
    return "unrecognized command" not in err and "diff" in err


def dataset_for(path: str) -> tuple[str, bytes]:
    """(dataset, mountpoint) of the ZFS filesystem holding path (longest mountpoint)."""
    real = os.path.realpath(os.fsencode(path))
    out = proc.run(["zfs", "list", "-H", "-t", "filesystem", "-o", "name,mountpoint"]).stdout
    best: tuple[str, bytes] | None = None
    for line in out.splitlines():
        name, _, mnt = line.partition(b"\t")
        if mnt.startswith(b"/") and (real == mnt or real.startswith(mnt.rstrip(b"/") + b"/")) \
                and (best is None or len(mnt) > len(best[1])):
            best = (name.decode(), mnt)
    if best is None:
        raise proc.ProcError(["zfs", "list"], 1, f"no ZFS dataset holds {path}")
    return best


def pass_snapshots(dataset: str) -> list[str]:
    """This daemon's pass snapshots of dataset (full names), oldest first."""
    out = proc.run(["zfs", "list", "-H", "-t", "snapshot", "-d", "1", "-o", "name",
                    dataset]).text
    snaps = [s for s in out.splitlines() if s.startswith(f"{dataset}@{PASS_PREFIX}")]
    return sorted(snaps)


def release(snaps: list[str], keep: str | None) -> list[str]:
    """Destroy pass snapshots except `keep`; returns problems (held ones stay)."""
    problems = []
    for s in snaps:
        if s != keep and "@" + PASS_PREFIX in s:
            try:
                proc.run(["zfs", "destroy", s], timeout=300)
            except proc.ProcError as e:
                problems.append(f"{s}: {e}")
    return problems


class ZfsPass(PlainPass):
    """PlainPass whose changed files come from `zfs diff` between pass snapshots."""

    def steps(self) -> Iterator[Step]:
        try:
            with volume_lock(self.lock_root()):
                yield from self.prepare()
                yield from self._tracked()
        finally:
            self.journal.close()

    def _tracked(self) -> Iterator[Step]:
        dataset, _ = dataset_for(str(self.vol.path))
        meta_key = f"zfs_pass_snapshot:{self.vol.name}"
        old = pass_snapshots(dataset)
        if not has_diff():
            self.c.add("zfs_diff_unavailable")
            yield from ScanPass.steps(self)  # stat walk, nothing pinned
            self._release(old, None)
            return
        new = f"{dataset}@{PASS_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}" \
              f"{time.time_ns() % 10**6:06d}Z"
        if not self.dry:
            proc.run(["zfs", "snapshot", new], timeout=300)
        prev = self.store.get_meta(meta_key)
        entries = None
        if prev in old and not self.opts.force_rescan and not self.dry:
            entries = self._diff(str(prev), new)
        if entries is not None:
            yield from self._incremental(entries)
        else:
            yield from ScanPass.steps(self)
        if not self.dry:
            self.store.set_meta(meta_key, new)
            self._release(pass_snapshots(dataset), new)

    def _diff(self, prev: str, new: str) -> list[DiffEntry] | None:
        """Changes prev -> new, or None (then the pass walks) if zfs diff fails."""
        try:
            return parse_diff(proc.run(["zfs", "diff", "-FHt", prev, new], timeout=3600).stdout)
        except (proc.ProcError, DiffFormatError) as e:
            self.problems.append({"path": str(self.vol.path), "reason": "zfs_diff_failed",
                                  "detail": f"{e}; walking the tree instead"})
            self.c.add("skips_zfs_diff_failed")
            return None

    def _release(self, snaps: list[str], keep: str | None) -> None:
        if self.dry:
            return
        for p in release(snaps, keep):
            self.problems.append({"path": str(self.vol.path), "reason": "snapshot_held",
                                  "detail": p})

    def _incremental(self, entries: list[DiffEntry]) -> Iterator[Step]:
        scan_id = self.store.begin_scan(self.roots)
        gone: set[bytes] = set()
        gone_dirs: list[bytes] = []
        fresh: list[bytes] = []
        for e in entries:
            if e.change in ("-", "R"):
                if e.kind == "/":
                    gone_dirs.append(e.path)  # every indexed path below it moved or died
                else:
                    gone.add(e.path)
            target = e.new_path if e.change == "R" else e.path
            # A modified directory only means its entries changed; those are listed
            # one by one. A created or renamed directory is walked whole.
            if target is not None and (e.kind == "F" or (e.kind == "/" and e.change != "M")) \
                    and e.change != "-":
                fresh.append(target)
        self.c.add("zfs_diff_entries", len(entries))
        for batch in batches(self._events(fresh), RECORD_BATCH):
            r = self.store.record(scan_id, batch)
            self.c.add("files_new", r.new)
            self.c.add("files_changed", r.changed)
            yield Step("scanning", f"{len(batch)} changed files")
        carry_forward(self.store, scan_id, self.roots, gone, tuple(gone_dirs))
        self.c.add("files_forgotten", self.store.finish_scan(scan_id, self.roots))
        yield from self.hash_and_act(scan_id)
        self._finish()

    def _events(self, fresh: list[bytes]) -> Iterator[FileEvent]:
        opts = WalkOptions(self.vol.min_size, self.vol.exclude, self.vol.cross_mounts)
        roots = normalize_roots([p for p in fresh if self._inside(p) and os.path.lexists(p)])
        return self.without_own(walk(roots, opts, self.walk_stats))

    def _inside(self, p: bytes) -> bool:
        return any(p == r or p.startswith(r.rstrip(b"/") + b"/") for r in self.roots)


register("zfs")(ZfsPass)
