"""Faults: kill -9 mid-upload (resume, no chunk uploaded twice), an S3 endpoint that
errors or disappears (retries, exit 75, no manifest, snapshot destroyed), corrupted
chunks (found by verify and by restore before anything is received)."""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup import Hooks, catalog, restore, run_job, snapshots, verify
from dedupd.backup.targets import make_target
from dedupd.errors import EXIT_TEMPFAIL, TemporaryFailure
from dedupd.index import backups as rows
from tests.fixtures.s3 import FaultProxy, Moto
from tests.integration.backup_util import (
    config_dict,
    dedupd,
    make_config,
    mountpoint,
    owned_snapshots,
    s3_target,
    store_for,
    tree,
    write_files,
    write_toml,
)

pytestmark = pytest.mark.integration


def _dataset(pool: Any, rng: random.Random, mib: int) -> Path:
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    src = mountpoint(pool, "data")
    write_files(src, rng, mib * 2, 512 * 1024)  # half random: about mib/2 MiB compressed
    return src


def _restore_and_compare(cfg: Any, pool: Any, dest: str, expected: dict[str, str]) -> None:
    tgt = make_target(cfg.backups["j"].target)
    p = restore.plan(tgt, "j", None, pool.dataset(dest))
    restore.run(tgt, p, verify_first=True, force=False, spool_dir=None, report=lambda m: None)
    assert tree(mountpoint(pool, dest)) == expected


@pytest.mark.parametrize("kill_at", [0, 2, 4])
def test_kill9_during_upload_resumes_without_reupload(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str, kill_at: int) -> None:
    pool = zpool("256M")
    src = _dataset(pool, random.Random(kill_at), 14)
    data = config_dict(tmp_path, pool, s3_target(moto.url, s3_bucket))
    conf = write_toml(tmp_path / "dedupd.toml", data)
    expected = tree(src)

    killed = dedupd("backup", "j", "-c", str(conf),
                    env={"DEDUPD_TEST_KILL_AFTER_CHUNK": str(kill_at)})
    assert killed.returncode == -9, killed.stderr
    bucket_path = f"/{s3_bucket}/host1/j/"
    assert not moto.requests("PUT", bucket_path + "manifests/")
    assert len(moto.requests("PUT", bucket_path + "chunks/")) == kill_at + 1
    listed = dedupd("backups", "j", "--json", "-c", str(conf))
    assert '"restore_points": []' in listed.stdout, "a partial backup is listed"

    done = dedupd("backup", "j", "--json", "-c", str(conf))
    assert done.returncode == 0, done.stderr
    assert '"resumed": true' in done.stdout
    puts = Counter(moto.requests("PUT", bucket_path + "chunks/"))
    assert puts and max(puts.values()) == 1, f"a chunk was uploaded twice: {puts}"
    cfg = make_config(tmp_path, pool, s3_target(moto.url, s3_bucket))
    ms = catalog.load(make_target(cfg.backups["j"].target), "j")
    assert len(ms) == 1 and len(ms[0].chunks) == len(puts) > kill_at + 1
    # the snapshot the resuming run took ahead (before it read the index) is gone
    assert owned_snapshots(pool.dataset("data")) == [ms[0].snapshot]
    _restore_and_compare(cfg, pool, "restored", expected)


def test_endpoint_disappears_mid_upload(tmp_path: Path, zpool: Any, moto: Moto,
                                        s3_bucket: str, fault_proxy: FaultProxy) -> None:
    pool = zpool("256M")
    src = _dataset(pool, random.Random(1), 8)
    cfg = make_config(tmp_path, pool, s3_target(fault_proxy.url, s3_bucket))
    store = store_for(cfg)
    before = fault_proxy.requests

    def cut(seq: int) -> None:
        if seq == 1:
            fault_proxy.set_mode("refuse")

    try:
        with pytest.raises(TemporaryFailure) as ei:
            run_job(cfg, "j", store, hooks=Hooks(after_chunk=cut))
        assert ei.value.exit_code == EXIT_TEMPFAIL
        assert "gave up after 3 attempts" in str(ei.value)
        assert fault_proxy.requests - before >= 2 + 3  # two chunks, then 3 tries
        keys = [o["Key"] for o in moto.client().list_objects_v2(
            Bucket=s3_bucket).get("Contents", [])]
        assert not [k for k in keys if "/manifests/" in k], "manifest written after failure"
        assert owned_snapshots(pool.dataset("data")) == [], "failed run left its snapshot"
        assert [r.state for r in rows.for_job(store, "j")] == ["failed"]

        fault_proxy.set_mode("pass")
        r = run_job(cfg, "j", store)
        assert r.full and not r.resumed
        # the failed attempt's orphan chunks are swept by remote retention
        keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
        assert {k.split("/")[3] for k in keys if "/chunks/" in k} == {r.id}
        _restore_and_compare(cfg, pool, "restored", tree(src))
    finally:
        store.close()


def test_endpoint_errors_exit_75(tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str,
                                 fault_proxy: FaultProxy) -> None:
    pool = zpool("256M")
    _dataset(pool, random.Random(2), 2)
    conf = write_toml(tmp_path / "dedupd.toml",
                      config_dict(tmp_path, pool, s3_target(fault_proxy.url, s3_bucket)))
    fault_proxy.set_mode("http503")
    before = fault_proxy.requests
    r = dedupd("backup", "j", "-c", str(conf))
    assert r.returncode == EXIT_TEMPFAIL, r.stderr
    assert "SlowDown" in r.stderr and "gave up after 3 attempts" in r.stderr
    assert fault_proxy.requests - before >= 3, r.stderr  # one connection or more per attempt
    assert owned_snapshots(pool.dataset("data")) == []


def _corrupt(moto: Moto, bucket: str, key: str, *, same_size: bool) -> None:
    """Flip bytes in an object but keep its metadata (a hostile or rotted copy)."""
    c = moto.client()
    obj = c.get_object(Bucket=bucket, Key=key)
    data = bytearray(obj["Body"].read())
    if same_size:
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[:-10]
    c.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=obj["Metadata"])


def test_corrupt_chunk_found_by_verify_and_restore(tmp_path: Path, zpool: Any, moto: Moto,
                                                   s3_bucket: str) -> None:
    pool = zpool("256M")
    src = _dataset(pool, random.Random(3), 4)
    cfg = make_config(tmp_path, pool, s3_target(moto.url, s3_bucket))
    store = store_for(cfg)
    try:
        run_job(cfg, "j", store)
        write_files(src / "more", random.Random(4), 4, 400_000)
        run_job(cfg, "j", store)
    finally:
        store.close()
    tgt = make_target(cfg.backups["j"].target)
    ms = catalog.load(tgt, "j")
    assert all(x.ok for x in verify.verify(tgt, "j", "full"))
    last = ms[-1].chunks[-1].key
    _corrupt(moto, s3_bucket, "host1/" + last, same_size=True)

    meta = verify.verify(tgt, "j", "metadata")
    assert all(x.ok for x in meta)  # same size and metadata: only a download can tell
    full = verify.verify(tgt, "j", "full")
    assert [x.ok for x in full] == [True, False]
    assert last in full[1].problems[0]

    p = restore.plan(tgt, "j", None, pool.dataset("restored"))
    with pytest.raises(restore.CorruptChunk):
        restore.run(tgt, p, verify_first=True, force=False, spool_dir=None,
                    report=lambda m: None)
    gone = subprocess.run(["zfs", "list", pool.dataset("restored")], capture_output=True)
    assert gone.returncode != 0, "something was received before the corrupt chunk was found"

    _corrupt(moto, s3_bucket, "host1/" + ms[0].chunks[0].key, same_size=False)
    meta = verify.verify(tgt, "j", "metadata")
    assert not meta[0].ok and "bytes, manifest says" in meta[0].problems[0]
    conf = write_toml(tmp_path / "c.toml", config_dict(tmp_path, pool,
                                                       s3_target(moto.url, s3_bucket)))
    cli = dedupd("verify", "j", "--level", "metadata", "-c", str(conf))
    assert cli.returncode == 1 and "PROBLEM" in cli.stdout

    # a damaged manifest: reported by verify, skipped (not fatal) by the next backup,
    # and its chunks are not swept as orphans
    mkey = f"host1/j/manifests/{ms[1].id}.json"
    moto.client().put_object(Bucket=s3_bucket, Key=mkey, Body=b"{not json")
    meta = verify.verify(tgt, "j", "metadata")
    assert any(x.id == ms[1].id and "unreadable" in x.problems[0] for x in meta)
    store = store_for(cfg)
    try:
        run_job(cfg, "j", store)
    finally:
        store.close()
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(ms[1].id in k and "/chunks/" in k for k in keys)


def test_changed_stream_restarts_under_new_id(tmp_path: Path, zpool: Any, moto: Moto,
                                              s3_bucket: str) -> None:
    """Resume finds the regenerated stream differs (here: another compression level):
    the attempt restarts cleanly under a new id; old chunks are not mixed in."""
    pool = zpool("256M")
    src = _dataset(pool, random.Random(21), 8)
    target = s3_target(moto.url, s3_bucket)
    conf = write_toml(tmp_path / "dedupd.toml", config_dict(tmp_path, pool, target))
    killed = dedupd("backup", "j", "-c", str(conf), env={"DEDUPD_TEST_KILL_AFTER_CHUNK": "1"})
    assert killed.returncode == -9
    cfg = make_config(tmp_path, pool, target, compression_level=9)
    store = store_for(cfg)
    try:
        old = rows.unfinished(store, "j")
        assert old is not None
        r = run_job(cfg, "j", store)
        assert r.id != old.id and r.uploaded == r.chunks
        states = {x.id: x.state for x in rows.for_job(store, "j")}
        assert states == {old.id: "abandoned", r.id: "complete"}
    finally:
        store.close()
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not [k for k in keys if old.id in k], "chunks of the abandoned attempt remain"
    _restore_and_compare(cfg, pool, "restored", tree(src))


def test_full_gives_up_an_unfinished_incremental(tmp_path: Path, zpool: Any, moto: Moto,
                                                 s3_bucket: str) -> None:
    pool = zpool("256M")
    src = _dataset(pool, random.Random(31), 1)
    target = s3_target(moto.url, s3_bucket)
    conf = write_toml(tmp_path / "dedupd.toml", config_dict(tmp_path, pool, target))
    assert dedupd("backup", "j", "-c", str(conf)).returncode == 0
    write_files(src / "more", random.Random(32), 6, 512 * 1024)
    killed = dedupd("backup", "j", "-c", str(conf), env={"DEDUPD_TEST_KILL_AFTER_CHUNK": "0"})
    assert killed.returncode == -9
    cfg = make_config(tmp_path, pool, target)
    store = store_for(cfg)
    try:
        old = rows.unfinished(store, "j")
        assert old is not None and old.base_guid is not None
        r = run_job(cfg, "j", store, full=True)
        assert r.full and not r.resumed
        assert rows.get(store, old.id).state == "abandoned"  # type: ignore[union-attr]
        # names can repeat within a second: the old attempt's snapshot is gone by GUID
        assert old.guid not in {x.guid for x in snapshots.list_snapshots(pool.dataset("data"))}
    finally:
        store.close()
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert not [k for k in keys if old.id in k]
    _restore_and_compare(cfg, pool, "restored", tree(src))
