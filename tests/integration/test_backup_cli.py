"""The commands end to end (subprocesses), on cold storage: DEEP_ARCHIVE chunks,
warm manifests; restore requests RestoreObject for every chunk and waits."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from tests.fixtures.s3 import Moto
from tests.integration.backup_util import (
    config_dict,
    dedupd,
    mountpoint,
    owned_snapshots,
    s3_target,
    tree,
    write_files,
    write_toml,
)

pytestmark = pytest.mark.integration


def test_cli_cold_storage_backup_list_verify_restore(tmp_path: Path, zpool: Any, moto: Moto,
                                                     s3_bucket: str) -> None:
    pool = zpool("256M")
    ds = pool.dataset("data")
    subprocess.run(["zfs", "create", ds], check=True)
    src = mountpoint(pool, "data")
    write_files(src, random.Random(9), 6, 400_000)
    conf = write_toml(tmp_path / "dedupd.toml", config_dict(
        tmp_path, pool, s3_target(moto.url, s3_bucket, storage_class="DEEP_ARCHIVE")))
    c = ["-c", str(conf)]

    dry = dedupd("backup", "j", "--dry-run", "--json", *c)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["dry_run"] and owned_snapshots(ds) == []

    first = dedupd("backup", "j", "--json", *c)
    assert first.returncode == 0, first.stderr
    r1 = json.loads(first.stdout)
    assert r1["full"] and r1["chunks"] >= 2
    (src / "new.txt").write_text("incremental\n" * 5000)
    second = dedupd("backup", "j", *c)
    assert second.returncode == 0 and "incremental from" in second.stdout, second.stderr
    expected = tree(src)

    listing = dedupd("backups", "j", "--json", *c)
    pts = json.loads(listing.stdout)["restore_points"]
    assert [p["full"] for p in pts] == [True, False]
    assert pts[1]["chain"] == [pts[0]["id"], pts[1]["id"]]

    s3 = moto.client()
    objs = s3.list_objects_v2(Bucket=s3_bucket)["Contents"]
    classes = {o["Key"].split("/")[2]: set() for o in objs}
    for o in objs:
        classes[o["Key"].split("/")[2]].add(o.get("StorageClass", "STANDARD"))
    assert classes == {"manifests": {"STANDARD"}, "chunks": {"DEEP_ARCHIVE"}}
    chunk = next(o["Key"] for o in objs if "/chunks/" in o["Key"])
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidObjectState"):
        s3.get_object(Bucket=s3_bucket, Key=chunk)

    assert dedupd("verify", "j", "--level", "metadata", *c).returncode == 0
    cold = dedupd("verify", "j", "--level", "full", *c)
    assert cold.returncode == 1 and "cold storage" in cold.stdout

    dest = pool.dataset("restored")
    noyes = dedupd("restore", "j", "--target", dest, *c)
    assert noyes.returncode == 2 and "--yes" in noyes.stderr
    plan = dedupd("restore", "j", "--target", dest, "--dry-run", "--json", *c)
    assert len(json.loads(plan.stdout)["chain"]) == 2

    later = dedupd("restore", "j", "--target", dest, "--yes", "--no-wait", *c)
    assert later.returncode == 75, later.stderr
    assert "requested restore (thaw) of" in later.stderr and "waiting for" in later.stderr
    head = s3.head_object(Bucket=s3_bucket, Key=chunk)
    assert "ongoing-request" in head.get("Restore", "")  # RestoreObject was issued

    done = dedupd("restore", "j", "--target", dest, "--yes", "--poll", "0.1", *c)
    assert done.returncode == 0, done.stderr
    assert "requested restore" not in done.stderr  # resumed: nothing asked twice
    assert tree(mountpoint(pool, "restored")) == expected
    (mountpoint(pool, "restored") / "stray.txt").write_text("overwritten by a restore")
    again = dedupd("restore", "j", "--target", dest, "--yes", "--poll", "0.1", *c)
    assert again.returncode == 0, again.stderr  # already there: changes rolled back
    assert tree(mountpoint(pool, "restored")) == expected
    subprocess.run(["zfs", "create", pool.dataset("other")], check=True)
    (mountpoint(pool, "other") / "unrelated.txt").write_text("replaced by the restore")
    over = dedupd("restore", "j", "--target", pool.dataset("other"), "--yes", *c)
    assert over.returncode == 0 and "destroying" in over.stderr, over.stderr
    assert tree(mountpoint(pool, "other")) == expected

    verified = dedupd("verify", "j", "--level", "full", "--json", "--scratch",
                      pool.dataset("scratch"), *c)
    doc = json.loads(verified.stdout)
    assert doc["ok"] is True and doc["test_restore"] == pts[1]["snapshot"]
    assert subprocess.run(["zfs", "list", pool.dataset("scratch")],
                          capture_output=True).returncode != 0
    after = json.loads(dedupd("backups", "j", "--json", *c).stdout)["restore_points"]
    assert [p["verified"] for p in after] == ["full", "full"]
    sample = json.loads(dedupd("verify", "j", "--level", "sample", "--sample", "50",
                               "--json", *c).stdout)
    assert sample["ok"] and all(p["chunks_downloaded"] >= 1 for p in sample["restore_points"])
