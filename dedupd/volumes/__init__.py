"""Volume kinds and the contract a volume pass fulfils.

A *pass* is one round over a volume: find what changed, hash size-matched
candidates, dedupe verified groups. It is a generator of bounded steps so the
daemon can serve volumes round-robin (one step per volume per turn, run in a
thread because steps block), and `run --once` simply drains it.

Every kind is one pass driver (volumes/pipeline.py) with its pair of change
source and dedupe engine, declared in pipeline.KIND_TABLE (btrfs/xfs: extent
dedupe; plain/zfs: hardlinks; pool: cross-drive). docs/architecture.md.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dedupd.config import VolumeConfig
from dedupd.index.store import Store


@dataclass(frozen=True)
class PassOptions:
    dry_run: bool = False
    force_rescan: bool = False


@dataclass(frozen=True)
class Step:
    """What the pass just did: state is idle|scanning|hashing|deduping."""

    state: str
    detail: str = ""


@dataclass(frozen=True)
class PassReport:
    volume: str
    kind: str
    dry_run: bool
    seconds: float
    counters: dict[str, int]  # tries/hits/misses/skips_<reason>, files_seen, ... (docs/status.md)
    actions: tuple[dict[str, Any], ...] = ()  # what was (or would be) done, one dict each
    problems: tuple[dict[str, str], ...] = ()
    bytes_reclaimed: int = 0  # measured, not estimated
    settle_seconds: float = 0.0
    # files of candidate size groups still inside settle_seconds of their last change:
    # when the first and the last of them settle (epoch seconds; 0 when none waits)
    pending_first: float = 0.0
    pending_last: float = 0.0

    @property
    def files_pending(self) -> int:
        return self.counters.get("files_pending", 0)

    @property
    def bytes_would_reclaim(self) -> int:
        """In a dry run, the most the described actions would free: each replaced
        copy (hardlink, cross-drive), each extent destination. An upper bound: a copy
        with other hardlinks, or extents already partly shared, frees less."""
        if not self.dry_run:
            return 0
        total = 0
        for a in self.actions:
            size = int(a.get("size") or 0)
            if a.get("action") in ("hardlink", "crossdrive") and a.get("result") == "would":
                total += size
            elif a.get("action") == "dedupe":
                total += size * len(a.get("paths") or ())
        return total

    def as_json(self) -> dict[str, Any]:
        return {"volume": self.volume, "kind": self.kind, "dry_run": self.dry_run,
                "seconds": round(self.seconds, 3), "bytes_reclaimed": self.bytes_reclaimed,
                "bytes_would_reclaim": self.bytes_would_reclaim,
                "pending": {"files": self.files_pending, "settle_seconds": self.settle_seconds,
                            "first_settles_at": self.pending_first or None,
                            "last_settles_at": self.pending_last or None},
                "counters": self.counters, "actions": list(self.actions),
                "problems": list(self.problems)}


class VolumePass(Protocol):
    """One pass over one volume. Not thread-safe: one caller drives steps()."""

    @property
    def counters(self) -> dict[str, int]: ...

    def steps(self) -> Iterator[Step]:
        """Each next() does one bounded unit of work (blocking) and says what it did."""
        ...

    def report(self) -> PassReport:
        """Valid once steps() is exhausted."""
        ...


PassFactory = Callable[[VolumeConfig, Store, PassOptions], VolumePass]
# Passes that replace a kind's own (tests only: a pass that sleeps in every step).
KINDS: dict[str, PassFactory] = {}


def make_pass(vol: VolumeConfig, store: Store, opts: PassOptions) -> VolumePass:
    """The pass of vol's kind. Raises TemporaryFailure (one line, exit 75) when the
    volume's path or a pool branch is gone or not a directory (an unmounted disk
    reappears; the daemon retries later), ConfigError for an unknown kind."""
    from dedupd.errors import ConfigError
    from dedupd.volumes.pipeline import build

    for p in (vol.path, *vol.branches):
        _require_dir(vol.name, p)
    factory = KINDS.get(vol.kind)
    vp = factory(vol, store, opts) if factory is not None else build(vol, store, opts)
    if vp is None:
        raise ConfigError("-", f"volumes.{vol.name}.kind", f"kind {vol.kind!r} is not "
                          "implemented yet")
    return Anchored(vp, volume_roots(vol), vol.cross_mounts)


def volume_roots(vol: VolumeConfig) -> list[bytes]:
    """The directories a pass of vol may touch: its path, or a pool's branches."""
    import os

    return [os.path.realpath(os.fsencode(p)) for p in (vol.branches or (vol.path,))]


class Anchored:
    """A pass whose every path is resolved beneath the volume's roots (handles.py):
    nothing it reads, links or removes can lie outside them or across a mount."""

    def __init__(self, inner: VolumePass, roots: list[bytes], cross_mounts: bool) -> None:
        self.inner, self.roots, self.cross_mounts = inner, roots, cross_mounts

    @property
    def counters(self) -> dict[str, int]:
        return self.inner.counters

    def steps(self) -> Iterator[Step]:
        from dedupd import handles

        with handles.anchored(self.roots, cross_mounts=self.cross_mounts):
            yield from self.inner.steps()

    def report(self) -> PassReport:
        return self.inner.report()

    def __getattr__(self, name: str) -> Any:
        # live progress (walk_stats, hash_stats) is read from the pass itself
        return getattr(self.inner, name)


def _require_dir(name: str, p: Path) -> None:
    from dedupd.errors import TemporaryFailure

    try:
        st = os.stat(p)
    except OSError as e:
        raise TemporaryFailure(f"volume {name}: {p}: {e.strerror} (not mounted?)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise TemporaryFailure(f"volume {name}: {p} is not a directory")
