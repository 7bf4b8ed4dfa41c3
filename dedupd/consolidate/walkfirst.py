"""A consolidation's index walk, forked before the run's modules are imported.

`dedupd consolidate NAME` imports 30 ms of modules (the run, the index, the
copies) after its config is loaded and before its index pass forks the walk
(treewalk.py), whose 0.15 s on the real bench tree were most of the pass. So
commands/consolidate.py forks it here first (start), from the config it loaded,
and imports the rest meanwhile; index_trees takes it (take) only when it walks
exactly the roots and options the run resolved itself, else it is ended and the
run walks as before. A run that recovered an interrupted operation, or swept the
temp files of one, ends it too (drop): those change the trees it was walking.
Like the run's, this walk only lists directories (never a file's bytes), beneath
roots resolve_roots checked; that it begins before the archive's lock changes
nothing it can see: what it walked is used only by the run that holds the lock
after it. Anything that fails here is a guess gone: the run's own checks say why.
"""

from __future__ import annotations

import resource

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.roots import Roots, resolve_roots, walk_parts
from dedupd.consolidate.treewalk import TreeWalk
from dedupd.scan.walk import RECORD_BATCH

MIN_FILES = 64  # open-file limit (soft) under which no walk is forked first
_Key = tuple[Roots, tuple[str, ...], tuple[str, ...], object]
_walk: tuple[_Key, TreeWalk] | None = None  # started, not taken yet


def start(cfg: ConsolidateConfig) -> None:
    """Fork cfg's index walk, if its roots resolve (the run reports it if not) and the
    open-file limit leaves room for its pipes: under one this low the run needs every
    handle itself, and says so when it lacks one (the index's, else the first it
    cannot open), which a walk holding two would turn into another error."""
    global _walk
    drop()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < MIN_FILES:
        return
    try:
        roots = resolve_roots(cfg)
        _walk = (_key(roots, cfg), TreeWalk(walk_parts(roots, cfg), RECORD_BATCH))
    except Exception:  # noqa: BLE001 - a guess: the run resolves and walks again
        _walk = None


def take(roots: Roots, cfg: ConsolidateConfig) -> TreeWalk | None:
    """The walk start() forked, if it walks what walk_parts(roots, cfg) walks;
    otherwise it is ended (None)."""
    global _walk
    got, _walk = _walk, None
    if got is None:
        return None
    key, walking = got
    if key == _key(roots, cfg):
        return walking
    walking.close()
    return None


def drop() -> None:
    """End a walk start() forked and nothing took (idempotent)."""
    global _walk
    got, _walk = _walk, None
    if got is not None:
        got[1].close()


def _key(roots: Roots, cfg: ConsolidateConfig) -> _Key:
    """What a walk's parts depend on (roots.walk_parts)."""
    return roots, cfg.include, cfg.exclude, cfg.quarantine_dir
