"""Stage 1: what is in the sources and the archive, grouped by content.

One index scan covers every source root and the archive. Only files whose size
is shared by another file are read (head hash first, whole-file hash only when
heads collide), exactly as `dedupd scan`; unchanged files keep their hashes, so
a re-run over unchanged trees reads nothing. Sources are only ever read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from dedupd.config import ConsolidateConfig
from dedupd.consolidate import walkfirst
from dedupd.consolidate.roots import Roots, walk_parts
from dedupd.consolidate.treewalk import TreeWalk
from dedupd.files.events import Problem, WalkStats
from dedupd.hashing import Hasher, HashStats, HashWriter, Stability
from dedupd.index import provenance as prov
from dedupd.index.db import S64, U64
from dedupd.index.store import IndexedFile, Store
from dedupd.scan.walk import RECORD_BATCH
from dedupd.tuples import NamedTuple

Progress = Callable[[str, int, int], None]
SAVE_BATCH = 2000
# A size group sorted while copied holds its distinct contents in memory and two handles
# per new content until its batch is placed: only groups this small are (else hashed).
UNSORTED_BYTES = 64 << 20
UNSORTED_FILES = 256
_ARCHIVE = 1  # index_trees' walk: part 0 the sources, part 1 the archive
_path = itemgetter(0)  # a FileEvent's path, in C
_new = tuple.__new__  # a NamedTuple's own __new__ is a Python function


class SourcePath(NamedTuple):
    """One path under a source root, with the inode it names. A NamedTuple, made by
    tuple.__new__ (_sources): one a source path of every run, at a fifth of a frozen
    dataclass's cost."""

    path: bytes
    root: bytes
    file: IndexedFile


@dataclass(frozen=True)
class Content:
    """Files known to hold the same bytes (by XXH3-128; bytes are compared before
    anything is recorded). A content with one inode may have no hash yet."""

    size: int
    full: bytes | None
    archive: tuple[IndexedFile, ...]  # archive inodes; .paths are archive paths only
    sources: tuple[SourcePath, ...]  # every source path, sorted by (root order, path)


@dataclass(frozen=True)
class Unsorted:
    """Source inodes of one size that no archive file has and nothing has hashed yet
    (a first import): sorted into contents while they are read for their copies
    (execute.py), so each is read once instead of hashed first and read again."""

    size: int
    sources: tuple[SourcePath, ...]  # every source path, sorted by (root order, path)
    inodes: int


@dataclass
class Inventory:
    scan_id: int
    roots: Roots
    contents: list[Content] = field(default_factory=list)
    unsorted: list[Unsorted] = field(default_factory=list)
    archive_paths: set[bytes] = field(default_factory=set)
    walk: WalkStats = field(default_factory=WalkStats)
    hashing: HashStats = field(default_factory=HashStats)
    # the inodes index_trees recorded, as record() returned them, until group_contents
    recorded: dict[tuple[int, int], IndexedFile] | None = field(default_factory=dict)

    @property
    def problems(self) -> list[Problem]:
        return self.walk.problems + self.hashing.problems


def index_trees(store: Store, cfg: ConsolidateConfig, roots: Roots,
                progress: Progress | None = None) -> Inventory:
    """Walk sources and archive into one scan of the index (no file data is read).
    The walk runs in a process of its own while this one records its batches
    (treewalk.py: the same batches, the same counters)."""
    walking = walkfirst.take(roots, cfg) or TreeWalk(walk_parts(roots, cfg), RECORD_BATCH)
    try:
        inv = Inventory(store.begin_scan([*roots.sources, roots.archive]), roots)
        recorded = inv.recorded
        assert recorded is not None  # a new Inventory's
        for part, batch in walking.batches(inv.walk):
            if part == _ARCHIVE:
                inv.archive_paths.update(map(_path, batch))
            for f in store.record(inv.scan_id, batch).files:
                k = (f[0], f[1])  # f.key
                had = recorded.get(k)
                if had is not None:  # a name of an inode met in an earlier batch: the
                    # row now has this batch's stat and hashes, and both batches' names
                    f = f._replace(paths=tuple(sorted({*had.paths, *f.paths})))
                recorded[k] = f
            if progress:
                progress("walk", inv.walk.files_seen, 0)
    finally:
        walking.close()
    store.finish_scan(inv.scan_id, [*roots.sources, roots.archive])
    return inv


def group_contents(store: Store, inv: Inventory, progress: Progress | None = None,
                   defer: bool = False) -> None:
    """Hash size-matched candidates and fill inv.contents (sources and archive dups),
    by ascending size. With defer, size groups that only sources hold, none of them
    hashed and small enough to be held in memory, go to inv.unsorted unread."""
    engine = Hasher(Stability(0.0), inv.hashing)
    writer = HashWriter(store, SAVE_BATCH)  # one transaction per batch, not per size
    done = 0
    groups = _hashed_apart(inv, _recorded_groups(store, inv)
                           or prov.files_by_size(store, inv.scan_id))
    if defer:
        groups = _defer(inv, groups, progress)
    for res in engine.run(groups):
        done += len(res.files) + len(res.gone)
        if progress:
            progress("hash", done, 0)  # files of the size groups so far
        writer.add(res)
        grouped: set[tuple[int, int]] = set()
        for g in res.groups:
            grouped.update(f.key for f in g.files)
            _add(inv, g.files, g.full)
        for f in res.files:
            if f.key not in grouped:
                _add(inv, [f], f.full)
    writer.flush()
    # the engine hands size groups on as their reads complete
    inv.contents.sort(key=lambda c: c.size)


def _recorded_groups(store: Store, inv: Inventory) -> Iterator[list[IndexedFile]] | None:
    """prov.files_by_size's answer from what index_trees recorded, without its query
    (a tenth of a second for 20,000 files): each inode this scan saw, with every name
    it saw, one list per size (ascending), within a size by filesystem id and inode
    number as the index stores it (signed), the query's order. None where the index
    may hold something else (rows held back, filesystems whose inode numbers are
    made up at each mount: record() decides those by more than the batch)."""
    recorded, inv.recorded = inv.recorded, None
    if not recorded or store.held is not None or store.fsmap.renumbered:
        return None
    fs_of: dict[int, int] = {}
    for dev in {f.dev for f in recorded.values()}:
        fs = store.fsmap.known_fs(dev)
        if fs is None:
            return None
        fs_of[dev] = fs
    files = sorted(recorded.values(), key=lambda f: (
        f.size, fs_of[f.dev], f.ino - U64 if f.ino >= S64 else f.ino))
    return _by_size(files)


def _by_size(files: list[IndexedFile]) -> Iterator[list[IndexedFile]]:
    group: list[IndexedFile] = []
    for f in files:
        if group and group[-1].size != f.size:
            yield group
            group = []
        group.append(f)
    if group:
        yield group


def _hashed_apart(inv: Inventory, groups: Iterator[list[IndexedFile]]
                  ) -> Iterator[list[IndexedFile]]:
    """The size groups with something to read. A lone inode of its size, and groups
    whose every inode has its whole hash in the index (unchanged since it was hashed:
    a changed inode's hashes are cleared when it is recorded), become contents here,
    as the engine would make them without a read, minus its cost per group (a first
    import: thousands of lone sizes; a re-run with nothing new: 9,000 groups)."""
    for files in groups:
        if len(files) == 1:  # one inode of its size: nothing to read or compare
            _add(inv, files, files[0].full)
            continue
        if not all(f.full is not None for f in files):
            yield files
            continue
        by_full: dict[bytes, list[IndexedFile]] = {}
        for f in files:
            assert f.full is not None  # checked above
            by_full.setdefault(f.full, []).append(f)
        for full, same in by_full.items():
            _add(inv, same, full)


def _defer(inv: Inventory, groups: Iterator[list[IndexedFile]],
           progress: Progress | None) -> Iterator[list[IndexedFile]]:
    """The size groups to hash now; the others go to inv.unsorted (group_contents)."""
    done = 0
    in_archive = inv.roots.in_archive
    for files in groups:
        n = len(files)
        if n < 2 or n > UNSORTED_FILES or files[0].size * n > UNSORTED_BYTES:
            yield files
            continue
        for f in files:  # one pass: any hash known, or any name in the archive
            if f.full is not None or any(map(in_archive, f.paths)):
                break
        else:
            sources = _sources(inv, files)
            inv.unsorted.append(Unsorted(files[0].size, tuple(sources), n))
            done += n
            if progress:
                progress("hash", done, 0)  # sorted later, while copied
            continue
        yield files


def _sources(inv: Inventory, files: Sequence[IndexedFile]) -> list[SourcePath]:
    source_of = inv.roots.source_of
    sources = [_new(SourcePath, (p, root, f)) for f in files for p in f.paths
               if (root := source_of(p)) is not None]
    if len(sources) > 1:
        order = inv.roots.order
        sources.sort(key=lambda s: (order[s.root], s.path))
    return sources


def _add(inv: Inventory, files: Sequence[IndexedFile], full: bytes | None) -> None:
    archive: list[IndexedFile] = []
    for f in files:
        apaths = tuple(p for p in f.paths if inv.roots.in_archive(p))
        if apaths:
            archive.append(f._replace(paths=apaths))
    sources = _sources(inv, files)
    if not sources and len(archive) < 2:
        return  # archive content with no source and no duplicate: nothing to do
    archive.sort(key=lambda f: f.paths[0])
    inv.contents.append(Content(files[0].size, full, tuple(archive), tuple(sources)))
