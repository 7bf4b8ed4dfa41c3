"""Cross-drive dedupe on a real mergerfs pool (FUSE) over tmpfs branches."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.mergerfs import MergerPool
from tests.integration.linktree import blob, config, content, dedupd, manifest, write

pytestmark = pytest.mark.integration
K = 1024


def pool_cfg(tmp: Path, pool: MergerPool, **keys: object) -> Path:
    return config(tmp, {"p": {"kind": "pool", "path": str(pool.root),
                              "pool_root": str(pool.root),
                              "branches": [str(b) for b in pool.branches],
                              "settle_seconds": 0, "min_size": 1, **keys}})


def free(p: Path) -> int:
    st = os.statvfs(p)
    return st.f_bfree * st.f_frsize


def test_pool_consolidates_across_branches(mergerfs_pool: Callable[..., MergerPool],
                                           tmp_path: Path) -> None:
    pool = mergerfs_pool(3)
    b0, b1, b2 = pool.branches
    write(b1 / "photos/x.jpg", blob(1, 300 * K))  # primary: kept although on branch 1
    write(b0 / "inbox/x.jpg", blob(1, 300 * K))
    write(b2 / "backup/2019/deep/x.jpg", blob(1, 300 * K))
    (b2 / "backup").chmod(0o750)
    os.chown(b2 / "backup", 1000, 1000)
    write(b0 / "same/z.bin", blob(2, 200 * K))  # same relative path on two branches
    write(b2 / "same/z.bin", blob(2, 200 * K))
    write(b2 / "local/w.bin", blob(3, 100 * K))  # same-branch duplicates: plain hardlink
    write(b2 / "local/w2.bin", blob(3, 100 * K))
    write(b0 / "unique.bin", blob(4, 100 * K))
    view, free0 = content(manifest(pool.root)), [free(b) for b in pool.branches]
    cfg = pool_cfg(tmp_path, pool, mode="apply",
                   primary_paths=[str(pool.root / "photos")])
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert content(manifest(pool.root)) == view  # same paths, same bytes in the pool view
    keep = (b1 / "photos/x.jpg").stat().st_ino
    assert (b1 / "inbox/x.jpg").stat().st_ino == keep
    assert (b1 / "backup/2019/deep/x.jpg").stat().st_ino == keep
    assert not (b0 / "inbox/x.jpg").exists() and not (b2 / "backup/2019/deep/x.jpg").exists()
    st = (b1 / "backup").stat()  # parent created with the source branch's owner and mode
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o750)
    assert (b0 / "same/z.bin").exists() and not (b2 / "same/z.bin").exists()
    assert (b2 / "local/w.bin").stat().st_ino == (b2 / "local/w2.bin").stat().st_ino
    assert doc["bytes_reclaimed"] == 600 * K + 200 * K + 100 * K
    freed = [free(b) - f for b, f in zip(pool.branches, free0, strict=True)]
    assert freed[0] >= 300 * K and freed[2] >= 600 * K
    kinds = sorted(a["action"] for a in doc["actions"] if a.get("result") == "done")
    assert kinds == ["crossdrive"] * 3 + ["hardlink"]
    again = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert [a for a in again["actions"] if a["action"] != "recover"] == []


def test_pool_dry_run_changes_nothing(mergerfs_pool: Callable[..., MergerPool],
                                      tmp_path: Path) -> None:
    pool = mergerfs_pool(2)
    b0, b1 = pool.branches
    write(b0 / "a/x.bin", blob(1, 100 * K))
    write(b1 / "b/x.bin", blob(1, 100 * K))
    before = [manifest(b) for b in pool.branches]
    view = manifest(pool.root)
    cfg = pool_cfg(tmp_path, pool)  # pool volumes default to dry-run
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert [manifest(b) for b in pool.branches] == before
    assert manifest(pool.root) == view
    (act,) = [a for a in doc["actions"] if a["action"] == "crossdrive"]
    assert act["result"] == "would" and act["link"] == str(b0 / "b/x.bin")
    assert not (b0 / "b").exists()


def test_pool_refuses_when_name_taken_on_kept_branch(mergerfs_pool: Callable[..., MergerPool],
                                                     tmp_path: Path) -> None:
    pool = mergerfs_pool(2)
    b0, b1 = pool.branches
    write(b0 / "k.bin", blob(1, 100 * K))
    write(b1 / "r.bin", blob(1, 100 * K))
    write(b0 / "r.bin", blob(9, 50 * K))  # another file already at that name on branch 0
    before = [manifest(b) for b in pool.branches]
    cfg = pool_cfg(tmp_path, pool, mode="apply")
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert doc["counters"]["skips_dest_exists"] == 1
    assert [manifest(b) for b in pool.branches] == before


def test_pool_quarantine_keeps_removed_copy_on_its_branch(
        mergerfs_pool: Callable[..., MergerPool], tmp_path: Path) -> None:
    pool = mergerfs_pool(2)
    b0, b1 = pool.branches
    write(b0 / "a/x.bin", blob(1, 100 * K))
    write(b1 / "b/x.bin", blob(1, 100 * K))
    view = content(manifest(pool.root, skip_dirs=(".q",)))
    cfg = pool_cfg(tmp_path, pool, mode="apply", quarantine_dir=str(pool.root / ".q"))
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert doc["counters"]["hits"] == 1 and doc["bytes_reclaimed"] == 0
    assert content(manifest(pool.root, skip_dirs=(".q",))) == view
    (q,) = list((b1 / ".q").iterdir())  # same drive as the removed copy
    assert q.read_bytes() == blob(1, 100 * K) and not (b1 / "b/x.bin").exists()
    again = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert again["counters"].get("hits", 0) == 0
