"""Retention after many runs: kept restore points all restore, the next incremental's
base is still there (held), foreign snapshots are untouched, chains deleted whole."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup import catalog, restore, run_job
from dedupd.backup.targets import make_target
from tests.fixtures.s3 import Moto
from tests.integration.backup_util import (
    all_snapshots,
    make_config,
    mountpoint,
    owned_snapshots,
    s3_target,
    store_for,
    tree,
    write_files,
)

pytestmark = pytest.mark.integration


def _userrefs(snap: str) -> int:
    r = subprocess.run(["zfs", "get", "-Hp", "-o", "value", "userrefs", snap],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.strip())


def test_keep_n_many_runs(tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str) -> None:
    pool = zpool("384M")
    ds = pool.dataset("data")
    subprocess.run(["zfs", "create", ds], check=True)
    src = mountpoint(pool, "data")
    # foreign snapshots: the user's own, one with our prefix but no dedupd:job
    # property, one marked for another job
    subprocess.run(["zfs", "snapshot", f"{ds}@users-own"], check=True)
    subprocess.run(["zfs", "snapshot", f"{ds}@dedupd-lookalike"], check=True)
    subprocess.run(["zfs", "snapshot", "-o", "dedupd:job=other", f"{ds}@dedupd-other"],
                   check=True)
    foreign = {f"{ds}@users-own", f"{ds}@dedupd-lookalike", f"{ds}@dedupd-other"}
    cfg = make_config(tmp_path, pool, s3_target(moto.url, s3_bucket), full_every="2",
                      retention={"keep_local": 2, "keep_remote": 2})
    store = store_for(cfg)
    rng = random.Random(5)
    states: dict[str, dict[str, str]] = {}
    try:
        for step in range(7):
            write_files(src / f"r{step}", rng, 2, 200_000)
            r = run_job(cfg, "j", store)
            states[r.id or ""] = tree(src)
            newest = r.snapshot
            owned = owned_snapshots(ds)
            assert newest in owned and _userrefs(newest) == 1  # held: next base
            assert len(owned) <= 2
            assert foreign <= set(all_snapshots(ds))
            assert all(_userrefs(s) == 0 for s in owned if s != newest)
    finally:
        store.close()
    tgt = make_target(cfg.backups["j"].target)
    ms = catalog.load(tgt, "j")
    ids = [m.id for m in ms]
    assert len(ms) < 7, "nothing was pruned remotely"
    newest_two = list(states)[-2:]
    assert set(newest_two) <= set(ids)
    for m in ms:  # every remaining point has its whole chain
        assert catalog.chain(ms, m)[0].full
    objs = moto.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    chunk_ids = {o["Key"].split("/")[3] for o in objs if "/chunks/" in o["Key"]}
    assert chunk_ids == set(ids), "chunks of pruned points (or orphans) remain"
    for i, m in enumerate(ms):  # every kept restore point restores
        dest = pool.dataset(f"k{i}")
        p = restore.plan(tgt, "j", m.id, dest)
        restore.run(tgt, p, verify_first=False, force=False, spool_dir=None,
                    report=lambda s: None)
        assert tree(mountpoint(pool, f"k{i}")) == states[m.id]
    # the next run is an incremental from the held base
    r = run_job(cfg, "j", make_store := store_for(cfg))
    make_store.close()
    assert r.base_snapshot == newest or r.full


def test_destroy_refuses_foreign_snapshots(zpool: Any) -> None:
    from dedupd.backup import snapshots

    pool = zpool("128M")
    ds = pool.dataset("data")
    subprocess.run(["zfs", "create", ds], check=True)
    subprocess.run(["zfs", "snapshot", f"{ds}@dedupd-plain"], check=True)
    subprocess.run(["zfs", "snapshot", "-o", "dedupd:job=other", f"{ds}@dedupd-x"],
                   check=True)
    mine = snapshots.create(ds, "dedupd-", "j")
    by_name = {s.short: s for s in snapshots.list_snapshots(ds)}
    for foreign in ("dedupd-plain", "dedupd-x"):
        with pytest.raises(snapshots.SnapshotError, match="refusing"):
            snapshots.destroy(by_name[foreign], "j", "dedupd-")
    snapshots.hold(mine)
    snapshots.hold(mine)  # idempotent
    assert snapshots.get(mine.name).userrefs == 1  # type: ignore[union-attr]
    snapshots.release(mine)
    snapshots.release(mine)
    snapshots.destroy(mine, "j", "dedupd-")
    assert {s.short for s in snapshots.list_snapshots(ds)} == {"dedupd-plain", "dedupd-x"}


def test_create_takes_a_free_name_when_the_plain_one_exists(zpool: Any) -> None:
    """create() tries <prefix><UTC second> first; when zfs refuses it (taken, here by
    a user's snapshot made for this second and the next two), it takes a -N name,
    and the user's snapshots are left as they were."""
    import time

    from dedupd.backup import snapshots

    pool = zpool("128M")
    ds = pool.dataset("data")
    subprocess.run(["zfs", "create", ds], check=True)
    now = time.time()
    taken = {f"dedupd-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now + d))}"
             for d in range(3)}
    for short in taken:
        subprocess.run(["zfs", "snapshot", f"{ds}@{short}"], check=True)
    assert time.time() - now < 2, "too slow to test: the names taken are in the past"
    mine = snapshots.create(ds, "dedupd-", "j")
    assert mine.short.rsplit("-", 1)[0] in taken and mine.short.rsplit("-", 1)[1] == "2"
    assert mine.job == "j"
    assert {s.short for s in snapshots.list_snapshots(ds)} == taken | {mine.short}


def test_a_users_hold_keeps_a_snapshot_the_job_released(tmp_path: Path, zpool: Any,
                                                         moto: Moto, s3_bucket: str) -> None:
    """keep_local=1: the next run releases the job's hold on the older snapshot and
    counts it out of the listing it prunes from (no second listing); a hold of the
    user's on that snapshot still keeps it, untouched, and the run does not fail."""
    pool = zpool("128M")
    ds = pool.dataset("data")
    subprocess.run(["zfs", "create", ds], check=True)
    cfg = make_config(tmp_path, pool, s3_target(moto.url, s3_bucket),
                      retention={"keep_local": 1, "keep_remote": 2})
    store = store_for(cfg)
    try:
        first = run_job(cfg, "j", store).snapshot
        subprocess.run(["zfs", "hold", "users-own", first], check=True)
        assert _userrefs(first) == 2
        t = time.monotonic()
        second = run_job(cfg, "j", store)
        assert time.monotonic() - t < 5, "the prune retried a destroy of a held snapshot"
        assert second.pruned_local == ()
        assert owned_snapshots(ds) == [first, second.snapshot]
        assert _userrefs(first) == 1 and _userrefs(second.snapshot) == 1
        subprocess.run(["zfs", "release", "users-own", first], check=True)
        third = run_job(cfg, "j", store)
        assert third.pruned_local == (first, second.snapshot)
        assert owned_snapshots(ds) == [third.snapshot]
    finally:
        store.close()
