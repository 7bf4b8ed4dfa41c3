"""Backup chains as OpenZFS needs them: send flags detected and kept for a whole
chain, raw for encrypted datasets, restores onto the job's own dataset, and
the ownership mark. zfs-fuse where it can show it; the OpenZFS emulator
(tests/fixtures/openzfs.py) where only OpenZFS has the feature."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup import catalog, restore, retention, run_job, snapshots
from dedupd.backup.targets import make_target
from dedupd.config import Config
from dedupd.errors import DedupdError
from tests.fixtures.s3 import Moto
from tests.fixtures.zfs import OpenZfs
from tests.integration.backup_util import (
    make_config,
    mountpoint,
    s3_target,
    store_for,
    tree,
    write_files,
)

pytestmark = pytest.mark.integration


def _setup(tmp_path: Path, zpool: Any, moto: Moto, bucket: str, **job: Any
           ) -> tuple[Any, Config, Path]:
    pool = zpool("256M")
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    src = mountpoint(pool, "data")
    write_files(src / "a", random.Random(3), 4, 200_000)
    return pool, make_config(tmp_path, pool, s3_target(moto.url, bucket), **job), src


def _restore(cfg: Config, at: str | None, dest: str, force: bool = False) -> list[str]:
    tgt = make_target(cfg.backups["j"].target)
    said: list[str] = []
    restore.run(tgt, restore.plan(tgt, "j", at, dest), verify_first=True, force=force,
                spool_dir=None, report=said.append)
    return said


def _manifests(cfg: Config) -> list[Any]:
    return catalog.load(make_target(cfg.backups["j"].target), "j")


def _props(openzfs: OpenZfs, doc: dict[str, dict[str, str]]) -> None:
    (openzfs.state / "props.json").write_text(json.dumps(doc))


def test_zfs_fuse_streams_carry_only_what_it_supports(tmp_path: Path, zpool: Any, moto: Moto,
                                                      s3_bucket: str) -> None:
    """zfs-fuse's send has no -L -e -c -w (detected) and its -p is not used (a killed
    `zfs send -p` leaves the snapshot busy there): a plain stream."""
    pool, cfg, src = _setup(tmp_path, zpool, moto, s3_bucket)
    store = store_for(cfg)
    try:
        run_job(cfg, "j", store)
        (src / "b").write_bytes(b"x" * 100_000)
        run_job(cfg, "j", store)
    finally:
        store.close()
    full, incr = _manifests(cfg)
    assert full.send_flags == ()
    assert incr.send_flags == ("-i", full.snapshot)
    assert full.extra["zfs_send_flags_available"] == "DRp"
    assert full.extra["encryption"] == "off"
    _restore(cfg, None, pool.dataset("back"))
    assert tree(mountpoint(pool, "back")) == tree(src)


def test_encrypted_dataset_is_sent_raw_by_default(tmp_path: Path, zpool: Any, moto: Moto,
                                                  s3_bucket: str, openzfs: OpenZfs) -> None:
    pool, cfg, src = _setup(tmp_path, zpool, moto, s3_bucket)
    _props(openzfs, {pool.dataset("data"): {"encryption": "aes-256-gcm"}})
    store = store_for(cfg)
    try:
        run_job(cfg, "j", store)
        (src / "b").write_bytes(b"y" * 100_000)
        r = run_job(cfg, "j", store)
        assert not r.full
    finally:
        store.close()
    full, incr = _manifests(cfg)
    assert full.send_flags == ("-w", "-p")
    assert incr.send_flags == ("-w", "-p", "-i", full.snapshot)
    assert [s[:2] for s in openzfs.sends()] == [["-w", "-p"], ["-w", "-p"]]
    said = _restore(cfg, None, pool.dataset("back"))
    assert all("-u" in r for r in json_lines(openzfs.state / "receives.jsonl"))
    assert any("received unmounted" in x for x in said), said
    assert tree(mountpoint(pool, "back")) == tree(src)


def json_lines(p: Path) -> list[list[str]]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_a_send_flag_change_mid_chain_forces_a_full(tmp_path: Path, zpool: Any, moto: Moto,
                                                    s3_bucket: str, openzfs: OpenZfs,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """raw turned on in the middle of a chain: an incremental of the old chain made
    with -w is what `zfs receive` rejects; a new full is sent instead, and every
    restore point still restores."""
    pool, cfg, src = _setup(tmp_path, zpool, moto, s3_bucket)
    store = store_for(cfg)
    states = []
    try:
        for step in range(2):
            run_job(cfg, "j", store)
            states.append(tree(src))
            (src / f"n{step}").write_bytes(bytes([step]) * 80_000)
        raw_cfg = make_config(tmp_path, pool, s3_target(moto.url, s3_bucket), raw=True)
        r = run_job(raw_cfg, "j", store)
        states.append(tree(src))
    finally:
        store.close()
    assert r.full
    assert "sending a new full" in caplog.text
    ms = _manifests(cfg)
    assert [m.full for m in ms] == [True, False, True]
    assert ms[0].send_flags == ("-L", "-e", "-c", "-p")
    assert ms[1].send_flags == ("-L", "-e", "-c", "-p", "-i", ms[0].snapshot)
    assert ms[2].send_flags == ("-w", "-p")
    for i, m in enumerate(ms):
        _restore(cfg, m.id, pool.dataset(f"back{i}"))
        assert tree(mountpoint(pool, f"back{i}")) == states[i]


def test_leftover_resume_token_is_named(tmp_path: Path, zpool: Any, moto: Moto,
                                        s3_bucket: str, openzfs: OpenZfs) -> None:
    pool, cfg, src = _setup(tmp_path, zpool, moto, s3_bucket)
    store = store_for(cfg)
    try:
        run_job(cfg, "j", store)
    finally:
        store.close()
    dest = pool.dataset("back")
    subprocess.run(["zfs", "create", dest], check=True)
    _props(openzfs, {dest: {"receive_resume_token": "1-e604ea4bf-e0-789c63a2"}})
    with pytest.raises(DedupdError, match=f"zfs receive -A {dest}"):
        _restore(cfg, None, dest, force=True)


def test_restore_onto_the_jobs_own_dataset_releases_its_hold(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str) -> None:
    """`restore --yes` of an older point onto the dataset being backed up: the
    job's hold on its newest snapshot must not block the confirmed overwrite."""
    pool, cfg, src = _setup(tmp_path, zpool, moto, s3_bucket)
    store = store_for(cfg)
    try:
        first = run_job(cfg, "j", store)
        want = tree(src)
        (src / "later.bin").write_bytes(b"z" * 100_000)
        run_job(cfg, "j", store)
    finally:
        store.close()
    held = [s for s in snapshots.list_snapshots(pool.dataset("data")) if s.userrefs]
    assert held, "the newest backup's snapshot is held"
    _restore(cfg, first.id, pool.dataset("data"), force=True)
    assert tree(src) == want


def test_an_inherited_job_property_does_not_make_a_snapshot_ours(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str) -> None:
    """dedupd:job set on the dataset is inherited by every snapshot of it, a
    user's own included: only a value set on the snapshot itself is the mark."""
    pool, cfg, src = _setup(tmp_path, zpool, moto, s3_bucket,
                            retention={"keep_local": 1, "keep_remote": 5})
    ds = pool.dataset("data")
    subprocess.run(["zfs", "set", "dedupd:job=j", ds], check=True)
    subprocess.run(["zfs", "snapshot", f"{ds}@dedupd-20200101T000000Z"], check=True)
    store = store_for(cfg)
    try:
        for _ in range(3):
            run_job(cfg, "j", store)
    finally:
        store.close()
    mine = snapshots.list_snapshots(ds)
    assert f"{ds}@dedupd-20200101T000000Z" in [s.name for s in mine]
    assert [s.job for s in mine if s.short == "dedupd-20200101T000000Z"] == [None]
    assert retention.prune_local(cfg.backups["j"], dry_run=True) == ()


def test_a_snapshot_named_like_an_older_ones_bookmark_is_bookmarked_all_the_same(
        tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str, openzfs: OpenZfs) -> None:
    """Two backups within one second: the first snapshot, destroyed, left its bookmark
    under the name the second snapshot gets. The second is bookmarked under a
    suffixed name (not held), and the next incremental starts from it. The other
    snapshot's bookmark is made under the job's snapshot's name once that name is
    known (testpoint "bookmark"): no race with the clock, however loaded the machine."""
    from dedupd import testpoints
    from dedupd.backup import bookmarks

    pool, cfg, src = _setup(tmp_path, zpool, moto, s3_bucket)
    ds = pool.dataset("data")
    store = store_for(cfg)
    subprocess.run(["zfs", "snapshot", f"{ds}@other"], check=True)
    other = snapshots.get(f"{ds}@other")
    assert other is not None

    def collide(_point: str, name: bytes) -> None:  # before the job bookmarks `name`
        short = name.decode().split("@", 1)[1]
        subprocess.run(["zfs", "bookmark", f"{ds}@other", f"{ds}#{short}"], check=True)
        subprocess.run(["zfs", "destroy", f"{ds}@other"], check=True)

    try:
        with testpoints.acting(("bookmark",), collide):
            r1 = run_job(cfg, "j", store)
        snap = snapshots.get(r1.snapshot)
        assert snap is not None
        assert snapshots.get(f"{ds}@other") is None  # the collision was made
        assert snap.userrefs == 0  # bookmarked, so not held
        mine = [b for b in bookmarks.list_bookmarks(ds) if b.guid == snap.guid]
        assert [b.short for b in mine] == [f"{snap.short}-2"]
        subprocess.run(["zfs", "destroy", r1.snapshot], check=True)
        (src / "later.bin").write_bytes(b"r" * 120_000)
        r2 = run_job(cfg, "j", store)
    finally:
        store.close()
    assert not r2.full and r2.base_snapshot == f"{ds}#{snap.short}-2"
    # the other snapshot's bookmark is not this job's: never pruned
    assert {b.guid for b in bookmarks.list_bookmarks(ds)} >= {other.guid}
    _restore(cfg, None, pool.dataset("back"))
    assert tree(mountpoint(pool, "back")) == tree(src)


def test_a_bookmark_is_the_next_incrementals_source(tmp_path: Path, zpool: Any, moto: Moto,
                                                    s3_bucket: str, openzfs: OpenZfs) -> None:
    """Where bookmarks exist nothing is held: the uploaded snapshot may be destroyed
    (by retention or by hand) and the next incremental starts from its bookmark."""
    from dedupd.backup import bookmarks

    pool, cfg, src = _setup(tmp_path, zpool, moto, s3_bucket)
    ds = pool.dataset("data")
    store = store_for(cfg)
    try:
        r1 = run_job(cfg, "j", store)
        assert [s.userrefs for s in snapshots.list_snapshots(ds)] == [0]
        first = snapshots.list_snapshots(ds)[0]
        assert [b.guid for b in bookmarks.list_bookmarks(ds)] == [first.guid]
        subprocess.run(["zfs", "destroy", r1.snapshot], check=True)  # not held: it goes
        assert snapshots.list_snapshots(ds) == []
        (src / "later.bin").write_bytes(b"q" * 120_000)
        r2 = run_job(cfg, "j", store)
    finally:
        store.close()
    assert not r2.full and r2.base_snapshot == f"{ds}#{first.short}"
    assert openzfs.sends()[-1][-3:] == ["-i", f"{ds}#{first.short}", r2.snapshot]
    full, incr = _manifests(cfg)
    assert incr.base_guid == full.snapshot_guid and incr.base_snapshot == r1.snapshot
    newest = snapshots.list_snapshots(ds)[-1]
    assert [b.guid for b in bookmarks.list_bookmarks(ds)] == [newest.guid]  # older pruned
    _restore(cfg, None, pool.dataset("back"))
    assert tree(mountpoint(pool, "back")) == tree(src)
