"""The duplicate groups of a scan: read from the index's size groups and hashed
(find_groups), read beside a rescan's walk (GroupsAhead), sorted for the report,
and their JSON."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dedupd.hashing.stats import HashStats, Stability
from dedupd.index.scanrow import ScanRow, id_of
from dedupd.index.store import IndexedFile, Store
from dedupd.progress import Progress
from dedupd.tuples import NamedTuple  # typing's class syntax, built ~10x faster (tuples.py)

if TYPE_CHECKING:  # the hashing engine is imported when a scan hashes (not a kept answer)
    from dedupd.hashing import Group
    from dedupd.scan.scanner import ScanOptions


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


# os.fsdecode's own encoding and errors, without its per-call checks (a report of
# thousands of paths)
_FS_ENC, _FS_ERR = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def group_json(g: DupGroup) -> dict[str, Any]:
    files = g.files
    doc: dict[str, Any] = {"size": g.size,
                           "paths": [f.paths[0].decode(_FS_ENC, _FS_ERR) for f in files]}
    if hardlinks := [p.decode(_FS_ENC, _FS_ERR) for f in files for p in f.paths[1:]]:
        doc["hardlinks"] = hardlinks
    return doc


def dup_groups(got: list[tuple[int, list[IndexedFile]]] | None
                ) -> tuple[DupGroup, ...] | None:
    return None if got is None else tuple(DupGroup(n, tuple(fs)) for n, fs in got)

def _path(f: IndexedFile) -> bytes:
    return f.path


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
    return sorted_groups(found)


def hashed_apart(candidates: Iterable[list[IndexedFile]], ready: list[Group]
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


def sorted_groups(found: Iterable[Group]) -> tuple[DupGroup, ...]:
    """Groups with members by path (the same answer whichever files the index had
    hashes for), largest waste first."""
    groups = [DupGroup(g.size, tuple(sorted(g.files, key=_path))) for g in found]
    groups.sort(key=lambda g: (-g.wasted, g.files[0].path))
    return tuple(groups)
