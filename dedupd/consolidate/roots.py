"""A consolidation's roots (its sources and archive, resolved and checked) and the
walk of them its index pass records (inventory.index_trees): the parts a TreeWalk
walks (treewalk.py), in this light module so that the walk can be forked before the
run's own modules are imported (walkfirst.py)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from dedupd import pathtrust
from dedupd.config import ConsolidateConfig
from dedupd.consolidate.treewalk import Parts
from dedupd.errors import ConfigError
from dedupd.files.events import FileEvent, WalkStats
from dedupd.fsops.archive_lock import LOCK_NAME, LOCK_TEMP_GLOB, TMP_GLOB
from dedupd.fsops.link import TEMP_PREFIX as LINK_TEMP_PREFIX
from dedupd.scan.walk import WalkOptions, normalize_roots, walk


@dataclass(frozen=True)
class Roots:
    sources: tuple[bytes, ...]
    archive: bytes
    # "root/" of each source and of the archive: asked once or twice per indexed path
    _prefixes: tuple[tuple[bytes, bytes], ...] = field(init=False, repr=False, compare=False)
    _archive_prefix: bytes = field(init=False, repr=False, compare=False)
    # each source root's place in config order (sources sort by it, then by path)
    order: dict[bytes, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_prefixes",
                           tuple((r.rstrip(b"/") + b"/", r) for r in self.sources))
        object.__setattr__(self, "_archive_prefix", self.archive.rstrip(b"/") + b"/")
        object.__setattr__(self, "order", {r: i for i, r in enumerate(self.sources)})

    def source_of(self, path: bytes) -> bytes | None:
        for prefix, r in self._prefixes:
            if path.startswith(prefix):
                return r
        return None

    def in_archive(self, path: bytes) -> bool:
        return path.startswith(self._archive_prefix)


def resolve_roots(cfg: ConsolidateConfig) -> Roots:
    """Real paths of sources and archive; refuses overlaps (an archive inside a share
    would import itself; a share inside the archive would already be 'imported')."""
    key = f"consolidate.{cfg.name}"
    for what, p in (("archive", cfg.archive), *(("sources", s) for s in cfg.sources)):
        _unbendable(os.fsencode(os.path.abspath(p)), f"{key}.{what}")
    arch = os.path.realpath(os.fsencode(cfg.archive))
    srcs = normalize_roots(cfg.sources)
    if not os.path.isdir(arch):
        raise ConfigError("<config>", f"{key}.archive", f"{os.fsdecode(arch)}: not a directory")
    for s in srcs:
        if not os.path.isdir(s):
            raise ConfigError("<config>", f"{key}.sources", f"{os.fsdecode(s)}: not a directory")
        a, b = arch.rstrip(b"/") + b"/", s.rstrip(b"/") + b"/"
        if a.startswith(b) or b.startswith(a):
            raise ConfigError("<config>", f"{key}.sources",
                              f"{os.fsdecode(s)} and the archive overlap")
    order = {os.path.realpath(os.fsencode(p)): i for i, p in enumerate(cfg.sources)}
    srcs.sort(key=lambda r: order.get(r, len(order)))
    return Roots(tuple(srcs), arch)


def _unbendable(path: bytes, key: str) -> None:
    """ConfigError when another user could point path elsewhere (pathtrust): a share
    root swapped for a symlink to /etc had its files imported and, with
    prune_sources, removed, by root."""
    why = pathtrust.why_bent(path)
    if why is not None:
        raise ConfigError("<config>", key, f"{os.fsdecode(path)}: {why}")


def _included(ev: FileEvent, root: bytes, patterns: Sequence[str]) -> bool:
    if not patterns:
        return True
    name = os.fsdecode(os.path.basename(ev.path))
    rel = os.fsdecode(ev.path[len(root.rstrip(b"/")) + 1:])
    return any(fnmatch.fnmatchcase(x, p) for p in patterns for x in (name, rel))


def _source_events(roots: Roots, cfg: ConsolidateConfig, stats: WalkStats
                   ) -> Iterator[FileEvent]:
    skip = cfg.exclude
    if cfg.quarantine_dir is not None:  # pruned copies kept there are not source files
        q = os.fsdecode(os.path.realpath(os.fsencode(cfg.quarantine_dir)))
        skip = (*skip, q, q + "/*")
    opts = WalkOptions(1, skip, False)
    for root in roots.sources:
        if not cfg.include:  # every file is (a test and a generator step less a file)
            yield from walk([root], opts, stats)
            continue
        for ev in walk([root], opts, stats):
            if _included(ev, root, cfg.include):
                yield ev
            else:
                stats.excluded += 1


def _archive_events(roots: Roots, stats: WalkStats) -> Iterator[FileEvent]:
    # Our own temp and lock files (and the linker's temp links) are never archive content.
    opts = WalkOptions(1, (TMP_GLOB, os.fsdecode(LOCK_NAME), LOCK_TEMP_GLOB,
                           os.fsdecode(LINK_TEMP_PREFIX) + "*"), False)
    return walk([roots.archive], opts, stats)


def walk_parts(roots: Roots, cfg: ConsolidateConfig) -> Parts:
    """The index pass's walk: the sources (cfg's include, exclude and quarantine
    applied), then the archive."""
    return lambda stats: (_source_events(roots, cfg, stats), _archive_events(roots, stats))
