"""Helpers shared by the backup tests: a job config on a real pool, file trees."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any

from dedupd import config
from dedupd.config import Config
from dedupd.index.store import Store
from tests.fixtures.zfs import Pool

MiB = 1024 * 1024


def make_config(tmp: Path, pool: Pool, target: dict[str, Any], **job: Any) -> Config:
    """A config with one backup job `j` of <pool>/data, parsed like a real file."""
    retention = job.pop("retention", {"keep_local": 10, "keep_remote": 50})
    data = {
        "daemon": {"runtime_dir": str(tmp / "run")},
        "database": {"url": f"sqlite:///{tmp}/index.db"},
        "backups": {"j": {
            "dataset": pool.dataset("data"), "snapshot_prefix": "dedupd-",
            "chunk_size": MiB, "compression": "zstd", "full_every": "1000",
            "retention": retention,
            "target": {"retries": 3, "retry_base_seconds": 0.05, "retry_max_seconds": 0.2,
                       "timeout_seconds": 20.0, **target},
            **job}},
    }
    return config.parse(data, "test.toml")


def s3_target(moto_url: str, bucket: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "s3", "bucket": bucket, "prefix": "host1/", "endpoint_url": moto_url, **kw}


def store_for(cfg: Config) -> Store:
    return Store(cfg.database.url)


def write_files(root: Path, rng: random.Random, n: int, size: int, prefix: str = "f") -> None:
    """n files of `size` bytes: half random (incompressible), half repetitive."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if i % 2:
            data = rng.randbytes(size)
        else:
            data = (f"{prefix}{i} line of text {rng.random()}\n".encode() * (size // 40 + 1))
            data = data[:size]
        (root / f"{prefix}{i:03d}.bin").write_bytes(data)


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of content (or 'dir'/'link:target') for every entry."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            p = Path(dirpath) / d
            out[str(p.relative_to(root))] = "dir"
        for f in files:
            p = Path(dirpath) / f
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def mountpoint(pool: Pool, rel: str) -> Path:
    return pool.mountpoint / rel
