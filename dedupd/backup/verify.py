"""Verify a job's restore points on the target.

metadata: HEAD every object (manifest + chunks): present, size and checksum as
  the manifest says. No download, so it works on cold storage too.
sample:   metadata, plus download and SHA-256 a percentage of the chunks.
full:     metadata, plus download and SHA-256 every chunk.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dedupd.backup import catalog
from dedupd.backup import manifest as mf
from dedupd.backup.chunker import Spool
from dedupd.backup.manifest import Manifest
from dedupd.backup.restore import CorruptChunk, fetch_verified
from dedupd.backup.targets import Target, TargetError

LEVELS = ("metadata", "sample", "full")


@dataclass
class PointResult:
    id: str
    snapshot: str
    objects: int = 0
    downloaded: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "snapshot": self.snapshot, "ok": self.ok,
                "objects_checked": self.objects, "chunks_downloaded": self.downloaded,
                "problems": self.problems}


def verify_point(target: Target, job: str, m: Manifest, level: str, sample_pct: float,
                 spool: Spool, rng: random.Random) -> PointResult:
    r = PointResult(m.id, m.snapshot)
    if target.head(mf.manifest_key(job, m.id)) is None:
        r.problems.append("manifest vanished")
    for c in m.chunks:
        info = target.head(c.key)
        r.objects += 1
        if info is None:
            r.problems.append(f"{c.key}: missing")
        elif info.size != c.size:
            r.problems.append(f"{c.key}: {info.size} bytes, manifest says {c.size}")
        elif info.sha256 is not None and info.sha256 != c.sha256:
            r.problems.append(f"{c.key}: checksum {info.sha256} on the target, "
                              f"manifest says {c.sha256}")
    if level == "metadata" or r.problems:
        return r
    picks = list(m.chunks)
    if level == "sample":
        n = max(1, round(len(picks) * sample_pct / 100.0))
        picks = rng.sample(picks, min(n, len(picks)))
    for c in picks:
        info = target.head(c.key)
        if info is not None and not info.readable:
            r.problems.append(f"{c.key}: in cold storage, not restored (use --level metadata "
                              "or thaw it first)")
            continue
        try:
            fetch_verified(target, c, spool)
            r.downloaded += 1
        except (CorruptChunk, TargetError) as e:
            r.problems.append(str(e))
    return r


def verify(target: Target, job: str, level: str, *, sample_pct: float = 10.0,
           at: str | None = None, spool_dir: Path | None = None,
           seed: int | None = None) -> list[PointResult]:
    """Check every restore point (or the one named by `at`) and its chain."""
    ms = catalog.load(target, job)
    chosen = ms if at is None else catalog.chain(ms, catalog.find(ms, at))
    rng = random.Random(seed)
    out = []
    if at is None:
        for bad in sorted(catalog.manifest_ids(target, job) - {m.id for m in ms}):
            out.append(PointResult(bad, "?", problems=[
                f"{mf.manifest_key(job, bad)}: manifest unreadable (damaged, or from a newer "
                "dedupd)"]))
    with Spool(spool_dir) as sp:
        for m in chosen:
            res = verify_point(target, job, m, level, sample_pct, sp, rng)
            try:
                catalog.chain(ms, m)
            except catalog.ChainError as e:
                res.problems.append(str(e))
            out.append(res)
    return out
