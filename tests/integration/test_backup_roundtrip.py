"""Full + incremental backups of a real zfs-fuse dataset to real S3 (moto) and rclone,
restored into a new dataset: every file identical to the source snapshot."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup import catalog, restore, run_job
from dedupd.backup.targets import make_target
from tests.fixtures.s3 import Moto
from tests.integration.backup_util import (
    MiB,
    make_config,
    mountpoint,
    s3_target,
    store_for,
    tree,
    write_files,
)

pytestmark = pytest.mark.integration


def _restore(cfg: Any, pool: Any, at: str | None, dest: str, force: bool = False) -> None:
    jc = cfg.backups["j"]
    tgt = make_target(jc.target)
    p = restore.plan(tgt, "j", at, dest)
    restore.thaw(tgt, p, wait=True, poll_seconds=0.1, max_wait=30, days=1,
                 report=lambda m: None)
    said: list[str] = []
    restore.run(tgt, p, verify_first=True, force=force, spool_dir=None, report=said.append)
    if force:
        assert any("receiving the rest" in x for x in said), said
        assert not any("destroying" in x for x in said), said


def _chain_roundtrip(tmp_path: Path, pool: Any, target: dict[str, Any], *, steps: int,
                     **job: Any) -> None:
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    src = mountpoint(pool, "data")
    cfg = make_config(tmp_path, pool, target, **job)
    store = store_for(cfg)
    rng = random.Random(7)
    states: list[tuple[str, dict[str, str]]] = []
    try:
        write_files(src / "a", rng, 6, 300_000)
        for step in range(steps):
            r = run_job(cfg, "j", store)
            assert r.full == (step == 0)
            assert r.chunks >= 1 and r.uploaded == r.chunks
            states.append((r.snapshot, tree(src)))
            # change things for the next incremental: new, modified, deleted, renamed
            write_files(src / f"s{step}", rng, 3, 200_000, prefix=f"n{step}")
            (src / "a" / "f000.bin").write_bytes(rng.randbytes(50_000 + step))
            if step == 1:
                (src / "a" / "f001.bin").unlink()
                (src / "a" / "f002.bin").rename(src / "a" / "moved.bin")
        ms = catalog.load(make_target(cfg.backups["j"].target), "j")
        assert len(ms) == steps
        assert [m.full for m in ms] == [True] + [False] * (steps - 1)
        for i, m in enumerate(ms[1:], 1):
            assert m.base_guid == ms[i - 1].snapshot_guid
        # restore the newest point and an older one, each into a new dataset
        for idx in (steps - 1, 1 if steps > 2 else 0):
            snap, expected = states[idx]
            dest = pool.dataset(f"restored{idx}")
            _restore(cfg, pool, snap.split("@", 1)[1], dest)
            assert tree(mountpoint(pool, f"restored{idx}")) == expected
        if steps > 2:  # bring the older restore forward: only the missing streams
            _restore(cfg, pool, None, pool.dataset("restored1"), force=True)
            assert tree(mountpoint(pool, "restored1")) == states[-1][1]
    finally:
        store.close()


@pytest.mark.parametrize("compression", ["zstd", "gzip", "pigz", "none"])
def test_s3_full_incremental_restore_each_compression(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str, compression: str) -> None:
    pool = zpool("256M")
    _chain_roundtrip(tmp_path, pool, s3_target(moto.url, s3_bucket), steps=2,
                     compression=compression)


def test_s3_chain_of_three_incrementals(tmp_path: Path, zpool: Any, moto: Moto,
                                        s3_bucket: str) -> None:
    pool = zpool("256M")
    _chain_roundtrip(tmp_path, pool, s3_target(moto.url, s3_bucket), steps=4)


def test_rclone_local_remote(tmp_path: Path, zpool: Any, rclone_conf: Path) -> None:
    pool = zpool("256M")
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    _chain_roundtrip(tmp_path, pool, {"kind": "rclone", "remote": "loc",
                                      "path": str(remote_dir), "config": str(rclone_conf)},
                     steps=3)
    assert any(remote_dir.rglob("*.zst"))


def test_rclone_s3_remote(tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str,
                          rclone_conf: Path) -> None:
    pool = zpool("256M")
    _chain_roundtrip(tmp_path, pool, {"kind": "rclone", "remote": "mots3",
                                      "path": f"{s3_bucket}/host1",
                                      "config": str(rclone_conf)}, steps=2,
                     compression="gzip")
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.startswith("host1/j/manifests/") for k in keys)
    assert MiB > 0
