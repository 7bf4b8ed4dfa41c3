"""Uploads overlap the stream (ring.py): the faults that only exist because they do.

A chunk's upload cut mid-body after the producer already overwrote its start
(the stream is regenerated, nothing uploaded twice, restore identical); an upload
failure while the producer runs ahead (clear failure, no hung or leaked thread
or process); kill -9 while both run (resume re-sends nothing confirmed); a store
slower than the stream and a stream slower than the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup import Hooks, restore, run_job
from dedupd.backup.targets import make_target
from dedupd.errors import TemporaryFailure
from dedupd.index import backups as rows
from tests.fixtures.s3 import FaultProxy, Moto
from tests.integration.backup_util import (
    MiB,
    config_dict,
    dedupd,
    half_random_dataset,
    make_config,
    mountpoint,
    owned_snapshots,
    s3_target,
    store_for,
    tree,
    write_toml,
)

pytestmark = pytest.mark.integration


def _restore_and_compare(cfg: Any, pool: Any, expected: dict[str, str]) -> None:
    tgt = make_target(cfg.backups["j"].target)
    p = restore.plan(tgt, "j", None, pool.dataset("restored"))
    restore.run(tgt, p, verify_first=True, force=False, spool_dir=None, report=lambda m: None)
    assert tree(mountpoint(pool, "restored")) == expected


def _completed_puts(moto: Moto, bucket: str) -> Counter[str]:
    """Chunk PUTs moto answered 200 (a request cut mid-body stores nothing)."""
    out: Counter[str] = Counter()
    for line in moto.log.read_text(errors="replace").splitlines():
        m = re.search(r'"PUT (/' + re.escape(bucket) + r'/\S*/chunks/\S+) HTTP/[\d.]+" 200',
                      line)
        if m:
            out[m.group(1)] += 1
    return out


def _children() -> set[int]:
    """PIDs of this process's children (any thread's)."""
    out: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            out |= {int(p) for p in (task / "children").read_text().split()}
    return out


def _upload_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("dedupd-upload-")]


def test_upload_cut_mid_body_after_overwrite_regenerates_the_stream(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str,
        fault_proxy: FaultProxy) -> None:
    pool = zpool("256M")
    src = half_random_dataset(pool, 41, 48)  # ~12 MiB stored: 3+ chunks of 4 MiB
    cfg = make_config(tmp_path, pool, s3_target(fault_proxy.url, s3_bucket),
                      chunk_size=4 * MiB)
    store = store_for(cfg)
    # A slow store keeps the producer right behind the reader, so by the time the
    # second chunk's request is cut its spooled start already holds the third.
    fault_proxy.slow(16 * MiB)
    fault_proxy.cut_once_after(6 * MiB)
    try:
        r = run_job(cfg, "j", store)
    finally:
        store.close()
    assert fault_proxy.cuts == 1
    assert r.restarts == 1, "the cut upload was retried from overwritten bytes"
    assert r.chunks >= 3 and r.uploaded == r.chunks and r.overlapped > 0
    puts = _completed_puts(moto, s3_bucket)
    assert len(puts) == r.chunks and max(puts.values()) == 1, puts
    fault_proxy.slow(None)
    _restore_and_compare(cfg, pool, tree(src))


def test_uploads_cut_every_time_give_up_after_the_restarts(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str,
        fault_proxy: FaultProxy) -> None:
    pool = zpool("256M")
    half_random_dataset(pool, 45, 48)
    cfg = make_config(tmp_path, pool, s3_target(fault_proxy.url, s3_bucket),
                      chunk_size=4 * MiB)
    store = store_for(cfg)
    fault_proxy.slow(16 * MiB)
    fault_proxy.cut_once_after(2 * MiB, times=1000)  # every request dies mid-body
    before = _children()
    try:
        with pytest.raises(TemporaryFailure, match="gave up after 3 stream restarts"):
            run_job(cfg, "j", store)
        assert [x.state for x in rows.for_job(store, "j")] == ["failed"]
    finally:
        store.close()
        fault_proxy.cut_once_after(0, times=0)
        fault_proxy.slow(None)
    assert fault_proxy.cuts >= 4
    assert not _upload_threads() and _children() <= before
    assert owned_snapshots(pool.dataset("data")) == []
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket).get(
        "Contents", [])]
    assert not [k for k in keys if "/manifests/" in k]


def test_upload_failure_while_the_producer_runs_ahead_stops_cleanly(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str,
        fault_proxy: FaultProxy) -> None:
    pool = zpool("256M")
    half_random_dataset(pool, 42, 48)  # ~12 MiB stored: 12 chunks of 1 MiB
    cfg = make_config(tmp_path, pool, s3_target(fault_proxy.url, s3_bucket))
    store = store_for(cfg)
    before = _children()

    def cut(seq: int) -> None:
        if seq == 1:
            fault_proxy.set_mode("refuse")

    try:
        with pytest.raises(TemporaryFailure, match="gave up after 3 attempts"):
            run_job(cfg, "j", store, hooks=Hooks(after_chunk=cut))
        assert [x.state for x in rows.for_job(store, "j")] == ["failed"]
    finally:
        store.close()
    assert not _upload_threads(), "the uploader thread outlived the failed run"
    assert _children() <= before, "zfs send / compressor left running"
    assert owned_snapshots(pool.dataset("data")) == []
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=s3_bucket).get(
        "Contents", [])]
    assert not [k for k in keys if "/manifests/" in k]


def test_kill9_mid_overlap_on_rclone_resends_nothing_confirmed(
        tmp_path: Path, zpool: Any, rclone_conf: Path) -> None:
    pool = zpool("256M")
    src = half_random_dataset(pool, 43, 32)
    remote = tmp_path / "remote"
    target = {"kind": "rclone", "remote": "loc", "path": str(remote),
              "config": str(rclone_conf)}
    conf = write_toml(tmp_path / "dedupd.toml", config_dict(tmp_path, pool, target))
    killed = dedupd("backup", "j", "-c", str(conf),
                    env={"DEDUPD_TEST_KILL_AFTER_CHUNK": "2"})
    assert killed.returncode == -9, killed.stderr
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
             for p in remote.rglob("*.zst") if p.name < "000003.zst"}
    assert sorted(first) == ["000000.zst", "000001.zst", "000002.zst"]
    # Chunk 3 may be there too, whole or cut short: the producer was sending it
    # live (live.py) when the uploader confirmed chunk 2; and chunk 4, empty: its
    # upload is started one chunk ahead. Resume HEADs them.
    assert {p.name for p in remote.rglob("*.zst")} - set(first) <= {"000003.zst",
                                                                     "000004.zst"}
    assert not list(remote.rglob("manifests/*"))

    done = dedupd("backup", "j", "--json", "-c", str(conf))
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["resumed"] and res["skipped"] in (3, 4) and res["streamed"] == 0
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in remote.rglob("*.zst")}
    assert len(after) > 3
    assert {k: after[k] for k in first} == first, "a confirmed chunk was uploaded again"
    assert sorted(after) == [f"{i:06d}.zst" for i in range(res["chunks"])], "a stray chunk"
    _restore_and_compare(make_config(tmp_path, pool, target), pool, tree(src))


@pytest.mark.parametrize("slow", ["store", "stream"])
def test_slow_store_or_slow_stream(tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str,
                                  fault_proxy: FaultProxy, slow: str) -> None:
    pool = zpool("256M")
    src = half_random_dataset(pool, 44, 24)
    if slow == "store":
        fault_proxy.slow(6 * MiB)
        cfg = make_config(tmp_path, pool, s3_target(fault_proxy.url, s3_bucket))
    else:  # zstd -19 is far slower than moto taking 1 MiB objects
        cfg = make_config(tmp_path, pool, s3_target(moto.url, s3_bucket),
                          compression_level=19)
    store = store_for(cfg)
    try:
        r = run_job(cfg, "j", store)
    finally:
        store.close()
    fault_proxy.slow(None)
    assert r.chunks >= 4 and r.uploaded == r.chunks
    if slow == "store":
        assert r.overlapped > 0 and r.stream_waited > r.upload_waited
    else:
        assert r.upload_waited > r.stream_waited
    _restore_and_compare(cfg, pool, tree(src))


def test_temp_disk_stays_at_one_chunk_while_uploads_overlap(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str,
        fault_proxy: FaultProxy) -> None:
    """The issue's budget: at most one chunk of temporary disk, also while the next
    chunk is being written behind the upload of the previous one."""
    pool = zpool("256M")
    src = half_random_dataset(pool, 46, 32)
    spool = tmp_path / "spool"
    spool.mkdir()
    fault_proxy.slow(8 * MiB)  # uploads slower than the stream: the ring is always full
    cfg = make_config(tmp_path, pool, s3_target(fault_proxy.url, s3_bucket),
                      spool_dir=str(spool))
    peak, files, stop = [0], set(), threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for fd in Path(f"/proc/{os.getpid()}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(str(spool)):
                        files.add(os.readlink(fd))
                        peak[0] = max(peak[0], fd.stat().st_size)
            stop.wait(0.005)

    t = threading.Thread(target=sample)
    t.start()
    store = store_for(cfg)
    try:
        r = run_job(cfg, "j", store)
    finally:
        stop.set()
        t.join()
        store.close()
        fault_proxy.slow(None)
    assert r.chunks >= 6 and r.overlapped > 0
    assert files, "the sampler never saw the spool file"
    assert 0 < peak[0] <= MiB, f"temp disk peaked at {peak[0]} bytes, chunk is {MiB}"
    assert list(spool.iterdir()) == []  # unlinked from the start: nothing left over
    _restore_and_compare(cfg, pool, tree(src))
