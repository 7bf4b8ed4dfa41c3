"""The restore points of a job, read from the target's manifests, and their chains.

The target is the source of truth: a lost index loses nothing restorable.
Chains are linked by GUIDs: an incremental's base_guid is the snapshot_guid of
an earlier manifest of the same job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dedupd.backup import manifest as mf
from dedupd.backup.chunker import Spool
from dedupd.backup.manifest import Manifest, ManifestError
from dedupd.backup.targets import Target
from dedupd.errors import DedupdError

log = logging.getLogger("dedupd.backup")


class ChainError(DedupdError):
    """A restore point's chain is broken (a base manifest is missing)."""


def load(target: Target, job: str, *, strict: bool = False) -> list[Manifest]:
    """Every readable manifest of the job, oldest first.

    An unreadable one (damaged, or written by a newer dedupd) is skipped with a
    warning, or raises ManifestError when strict: it must not stop new backups,
    and nothing is ever deleted on the strength of it (see manifest_ids).
    """
    out: list[Manifest] = []
    with Spool() as sp:
        for o in target.list(mf.manifest_dir(job)):
            if mf.id_of_manifest_key(o.key) is None:
                continue
            target.get(o.key, sp.file)
            sp.file.seek(0)
            try:
                out.append(Manifest.from_bytes(sp.file.read(), o.key))
            except ManifestError as e:
                if strict:
                    raise
                log.warning("%s; skipping it", e)
    return sorted(out, key=lambda m: (m.created, m.id))


def manifest_ids(target: Target, job: str) -> set[str]:
    """Ids that have a manifest object at all, readable or not."""
    ids = (mf.id_of_manifest_key(o.key) for o in target.list(mf.manifest_dir(job)))
    return {i for i in ids if i is not None}


def parent(ms: list[Manifest], m: Manifest) -> Manifest | None:
    """The manifest m's stream applies to: the newest earlier one with its base GUID."""
    if m.base_guid is None:
        return None
    cands = [x for x in ms if x.snapshot_guid == m.base_guid and x.created <= m.created
             and x.id != m.id]
    if not cands:
        raise ChainError(f"{m.id} ({m.snapshot}): its base {m.base_snapshot} "
                         f"(guid {m.base_guid}) has no manifest: chain broken")
    return max(cands, key=lambda x: (x.created, x.id))


def chain(ms: list[Manifest], m: Manifest) -> list[Manifest]:
    """[full, incr1, ..., m]: what a restore of m replays, in order."""
    out = [m]
    seen = {m.id}
    cur: Manifest | None = m
    while cur is not None and cur.base_guid is not None:
        cur = parent(ms, cur)
        if cur is None or cur.id in seen:
            raise ChainError(f"{m.id}: chain loops")
        seen.add(cur.id)
        out.append(cur)
    return list(reversed(out))


def root_of(ms: list[Manifest], m: Manifest) -> Manifest:
    return chain(ms, m)[0]


@dataclass(frozen=True)
class Point:
    """A restore point as `dedupd backups` shows it."""

    manifest: Manifest
    chain_ids: tuple[str, ...]
    broken: str | None


def points(ms: list[Manifest]) -> list[Point]:
    out = []
    for m in ms:
        try:
            out.append(Point(m, tuple(x.id for x in chain(ms, m)), None))
        except ChainError as e:
            out.append(Point(m, (), str(e)))
    return out


def find(ms: list[Manifest], at: str | None) -> Manifest:
    """A restore point by id, snapshot name (short or full) or GUID; newest when None."""
    if not ms:
        raise DedupdError("no restore points: nothing has been backed up yet")
    if at is None:
        return ms[-1]
    hits = [m for m in ms if at in (m.id, m.snapshot, m.snapshot.split("@", 1)[-1],
                                    str(m.snapshot_guid))]
    if not hits:
        raise DedupdError(f"no restore point {at!r} (see `dedupd backups JOB`)")
    return hits[-1]


__all__ = ["ChainError", "ManifestError", "Point", "chain", "find", "load", "points"]
