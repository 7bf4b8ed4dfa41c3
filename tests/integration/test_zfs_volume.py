"""ZFS volumes: hardlink dedupe on a real zfs-fuse dataset, pass snapshots, diff mode."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd.config import VolumeConfig
from dedupd.index.store import Store
from dedupd.volumes import PassOptions
from dedupd.volumes.link_engine import HardlinkEngine
from dedupd.volumes.pipeline import Pass
from dedupd.volumes.walk_source import FullWalk
from dedupd.volumes.zfs import PASS_PREFIX, DiffChanges, has_diff, pass_snapshots
from dedupd.volumes.zfs_diff import parse_diff
from dedupd.volumes.zfs_diff import parse_line as _parse_line
from dedupd.volumes.zfs_mounts import dataset_for
from tests.fixtures.zfs import Pool
from tests.integration.linktree import blob, config, content, dedupd, inodes, manifest, write

pytestmark = pytest.mark.integration


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True,
                          timeout=120).stdout


def test_zfs_fuse_dataset_links_and_releases_pass_snapshots(zpool: Callable[..., Pool],
                                                            tmp_path: Path) -> None:
    pool = zpool("256M")
    ds = pool.dataset("data")
    zfs("create", ds)
    root = pool.mountpoint / "data"
    zfs("snapshot", f"{ds}@dedupd-backup-keepme")  # not ours: never touched (empty here)
    write(root / "a/x.bin", blob(1, 400_000))
    write(root / "b/x.bin", blob(1, 400_000))
    write(root / "b/y.bin", blob(2, 100_000))
    write(root / "c/y copy.bin", blob(2, 100_000))
    # Left by an old pass: it pins every block written above until released.
    zfs("snapshot", f"{ds}@{PASS_PREFIX}20200101T000000000000Z")
    before = manifest(root)
    os.sync()
    used0 = int(zfs("get", "-Hp", "-o", "value", "used", ds))
    mnt = dataset_for(str(root))
    assert (mnt.dataset, mnt.mountpoint) == (ds, os.fsencode(root))
    cfg = config(tmp_path, {"z": {"kind": "zfs", "path": str(root), "settle_seconds": 0,
                                  "min_size": 1, "mode": "apply"}})
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert content(manifest(root)) == content(before)
    ino = inodes(root)
    assert ino["a/x.bin"] == ino["b/x.bin"] and ino["b/y.bin"] == ino["c/y copy.bin"]
    assert doc["bytes_reclaimed"] == 500_000
    # The freed blocks show in `used` once the transaction group commits (the
    # old pass snapshot was released by the pass, so nothing pins them).
    deadline = time.monotonic() + 30
    while used0 - int(zfs("get", "-Hp", "-o", "value", "used", ds)) < 450_000:
        assert time.monotonic() < deadline, "space was not freed on the dataset"
        os.sync()
        time.sleep(0.5)
    if not has_diff():  # zfs-fuse: stat walk, and no pass snapshot may pin space
        assert doc["counters"]["zfs_diff_unavailable"] == 1
        assert pass_snapshots(ds) == []
    snaps = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-d", "1", ds).split()
    assert f"{ds}@dedupd-backup-keepme" in snaps
    again = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert again["counters"].get("hits", 0) == 0


def test_dry_run_on_zfs_changes_nothing(zpool: Callable[..., Pool], tmp_path: Path) -> None:
    pool = zpool("256M")
    zfs("create", pool.dataset("d"))
    root = pool.mountpoint / "d"
    write(root / "x.bin", blob(1, 100_000))
    write(root / "y.bin", blob(1, 100_000))
    before, ino = manifest(root), inodes(root)
    cfg = config(tmp_path, {"z": {"kind": "zfs", "path": str(root), "settle_seconds": 0,
                                  "min_size": 1}})
    out = dedupd("run", "--once", "-c", str(cfg)).stdout
    assert "would hardlink" in out
    assert manifest(root) == before and inodes(root) == ino


def test_incremental_pass_from_diff_matches_a_full_walk(tmp_path: Path) -> None:
    """Diff mode on a real tree: the changes are made for real and described in
    OpenZFS `zfs diff -FHt` format (zfs-fuse cannot produce it), then the index
    after the incremental pass must equal the index a full walk builds."""
    root = tmp_path / "vol"
    write(root / "keep.bin", blob(1, 50_000))
    write(root / "old.bin", blob(2, 50_000))
    write(root / "dir one/inner.bin", blob(3, 50_000))
    write(root / "a.txt", blob(4, 50_000))
    vol = VolumeConfig("z", "zfs", root, settle_seconds=0, min_size=1, mode="apply")
    store = Store(f"sqlite:///{tmp_path}/i.db")
    list(Pass(vol, store, PassOptions(), FullWalk, HardlinkEngine).steps())  # a full walk
    (root / "old.bin").unlink()
    (root / "renamed").mkdir()
    os.rename(root / "a.txt", root / "renamed/b.txt")
    os.rename(root / "dir one", root / "dir two")
    write(root / "new file.bin", blob(1, 50_000))  # a duplicate of keep.bin
    r = os.fsdecode(root)
    diff = "\n".join([
        f"1.000000001\tM\t/\t{r}/",
        f"1.000000002\t-\tF\t{r}/old.bin",
        f"1.000000003\t+\t/\t{r}/renamed",
        f"1.000000004\tR\tF\t{r}/a.txt\t{r}/renamed/b.txt",
        f"1.000000005\tR\t/\t{r}/dir\\0040one\t{r}/dir\\0040two",
        f"1.000000006\t+\tF\t{r}/new\\0040file.bin",
    ]).encode()
    entries = parse_diff(diff)
    assert entries[-1] == _parse_line(diff.splitlines()[-1])
    zp2 = Pass(vol, store, PassOptions(), lambda run: DiffChanges(run, entries), HardlinkEngine)
    list(zp2.steps())
    rep = zp2.report()
    assert rep.counters["zfs_diff_entries"] == 6 and rep.counters["hits"] == 1
    assert (root / "keep.bin").stat().st_ino == (root / "new file.bin").stat().st_ino
    indexed = sorted(os.path.relpath(os.fsdecode(p[0]), r) for p in store.scan_paths())
    assert indexed == sorted(["keep.bin", "new file.bin", "renamed/b.txt", "dir two/inner.bin"])
    store.close()


# zfs-fuse cannot exchange names, nor rename with RENAME_NOREPLACE to a new name: the
# duplicate's name is held, checked, the kept inode linked at it, the held copy removed.
ZFS_FUSE_STEPS = ["journal PENDING", "link temp", "hold", "link name", "unlink temp",
                  "unlink hold", "sync", "journal 1 states"]


@pytest.mark.parametrize("k", range(1, len(ZFS_FUSE_STEPS) + 1))
def test_kill_during_link_on_zfs_fuse_then_recover(zpool: Callable[..., Pool], tmp_path: Path,
                                                   k: int) -> None:
    """The held swap of zfs-fuse, killed after each of its steps, on real ZFS."""
    from tests.integration.linktree import dedupd_here, unfinished_ops

    pool = zpool("256M")
    zfs("create", pool.dataset("k"))
    root = pool.mountpoint / "k"
    write(root / "x.bin", blob(1, 100_000))
    write(root / "y.bin", blob(1, 100_000))
    before = content(manifest(root))
    cfg = config(tmp_path, {"z": {"kind": "zfs", "path": str(root), "settle_seconds": 0,
                                  "min_size": 1, "mode": "apply"}})
    log = tmp_path / "steps.log"
    r = dedupd("run", "--once", "-c", str(cfg), env={"DEDUPD_TEST_KILL_AT_STEP": str(k),
                                                     "DEDUPD_TEST_STEP_LOG": str(log)},
               check=False)
    assert r.returncode == -9
    assert log.read_text().splitlines()[-1] == f"{k} {ZFS_FUSE_STEPS[k - 1]}"
    assert dedupd_here("recover", "-c", str(cfg))[0] == 0
    assert content(manifest(root)) == before and unfinished_ops(tmp_path / "index.db") == []
    assert dedupd_here("run", "--once", "-c", str(cfg))[0] == 0
    assert content(manifest(root)) == before
    assert (root / "x.bin").stat().st_ino == (root / "y.bin").stat().st_ino
