"""Helpers shared by the backup tests: a job config on a real pool, file trees."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from dedupd import config
from dedupd.config import Config
from dedupd.index.store import Store
from tests.fixtures.zfs import Pool

MiB = 1024 * 1024


def make_config(tmp: Path, pool: Pool, target: dict[str, Any], **job: Any) -> Config:
    """A config with one backup job `j` of <pool>/data, parsed like a real file."""
    return config.parse(config_dict(tmp, pool, target, **job), "test.toml")


def config_dict(tmp: Path, pool: Pool, target: dict[str, Any], **job: Any) -> dict[str, Any]:
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
    return data


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """Just enough TOML for our config dicts (tables of scalars and string lists)."""
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        subs = {k: v for k, v in table.items() if isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for k, v in table.items():
            if not isinstance(v, dict):
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in subs.items():
            emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", data)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


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


def half_random_dataset(pool: Pool, seed: int, n_files: int) -> Path:
    """Dataset POOL/data with n_files of 512 KiB, half random: about n_files/4 MiB
    once compressed."""
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    src = mountpoint(pool, "data")
    write_files(src, random.Random(seed), n_files, 512 * 1024)
    return src


def dedupd(*args: str, env: dict[str, str] | None = None, timeout: float = 300
           ) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "dedupd", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def owned_snapshots(dataset: str, job: str = "j") -> list[str]:
    """Snapshots of dataset whose dedupd:job property names `job`."""
    r = subprocess.run(["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,value",
                        "dedupd:job", dataset], capture_output=True, text=True, check=True)
    return [ln.split("\t")[0] for ln in r.stdout.splitlines()
            if "@" in ln and ln.split("\t")[1] == job]


def all_snapshots(dataset: str) -> list[str]:
    r = subprocess.run(["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name", "guid", dataset],
                       capture_output=True, text=True, check=True)
    return [ln for ln in r.stdout.split() if "@" in ln]
