"""BTRFS volume: extent dedupe on a real loop-mounted filesystem."""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd import fiemap
from dedupd.dedup import extent
from dedupd.dedup.extent_group import ExtentDeduper
from dedupd.dedup.lock import volume_lock
from dedupd.files.counters import Counters
from dedupd.index.store import IndexedFile, Store
from tests.fixtures.components import require_tools
from tests.integration.extent_helpers import (
    BLOCK,
    btrfs_data_bytes,
    copy_fresh,
    digests,
    make_groups,
    run_pass,
    write_random,
)

pytestmark = pytest.mark.integration
MountFactory = Callable[[str, str], Path]


@pytest.fixture
def vol(loopfs: MountFactory) -> Path:
    require_tools("btrfs")
    return loopfs("btrfs", "1G")


def test_reclaims_the_duplicate_bytes_and_keeps_content(vol: Path, store: Store) -> None:
    dup = make_groups(vol / "photos", groups=12, copies=3, size_blocks=64)
    write_random(vol / "photos" / "unique.jpg", 300 * BLOCK, 99)
    before = digests(vol)
    total0, disk0 = btrfs_data_bytes(vol)
    assert total0 == disk0  # nothing shared yet
    r = run_pass(store, vol)
    assert r.counters["hits"] == 24 and not r.problems
    total1, disk1 = btrfs_data_bytes(vol)
    assert total1 == total0
    assert abs((disk0 - disk1) - dup) <= dup * 0.01
    assert abs(r.bytes_reclaimed - dup) <= dup * 0.05  # statvfs also sees metadata
    assert digests(vol) == before

    again = run_pass(store, vol)
    assert again.actions == () and again.counters.get("hits", 0) == 0
    assert again.counters.get("bytes_read", 0) == 0
    third = run_pass(store, vol)  # the pass after sees no change at all
    assert third.counters.get("files_examined", 0) == 0
    assert btrfs_data_bytes(vol)[1] == disk1


def test_duperemove_backend_reclaims_the_same(vol: Path, store: Store) -> None:
    require_tools("duperemove")
    dup = make_groups(vol / "p", groups=6, copies=3, size_blocks=40)
    _, disk0 = btrfs_data_bytes(vol)
    r = run_pass(store, vol, dedup_backend="duperemove")
    assert r.counters["hits"] == 12, r.problems
    assert abs((disk0 - btrfs_data_bytes(vol)[1]) - dup) <= dup * 0.01


def test_dry_run_changes_nothing(vol: Path, store: Store) -> None:
    make_groups(vol / "p", groups=3, copies=2, size_blocks=16)
    _, disk0 = btrfs_data_bytes(vol)
    r = run_pass(store, vol, dry_run=True)
    assert r.dry_run and len(r.actions) == 3 and r.counters.get("hits", 0) == 0
    assert btrfs_data_bytes(vol)[1] == disk0


def test_kernel_refuses_different_tail(vol: Path, store: Store) -> None:
    """Same size, same head, different last byte: never merged, even when the index
    claims equal hashes (a crafted collision)."""
    data = write_random(vol / "a", 64 * BLOCK, 5)
    (vol / "b").write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    fa, fb = os.open(vol / "a", os.O_RDONLY), extent.open_dest(os.fsencode(vol / "b"))
    try:
        res = extent.dedupe_fds(fa, len(data), [fb])
        assert res[0].status == "differs"
    finally:
        os.close(fa)
        os.close(fb)
    # Through the group path with lying hashes.
    r = run_pass(store, vol)  # index both (different hashes: no group)
    assert r.counters.get("groups", 0) == 0
    files = []
    for name in ("a", "b"):
        st = os.stat(vol / name)
        files.append(IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                 st.st_ctime_ns, 1, b"x" * 16, 0, (os.fsencode(vol / name),)))
    c = Counters()
    ExtentDeduper(store, c).dedupe_group(len(data), files)
    assert c.values.get("misses_differs") == 1 and not c.values.get("hits")
    assert (vol / "a").read_bytes() == data
    assert (vol / "b").read_bytes()[-1] == data[-1] ^ 0xFF


def test_snapshot_stays_readonly_and_received_uuid_untouched(vol: Path, store: Store,
                                                              tmp_path: Path) -> None:
    subprocess.run(["btrfs", "subvolume", "create", str(vol / "live")], check=True,
                   capture_output=True)
    make_groups(vol / "live", groups=4, copies=2, size_blocks=32)
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(vol / "live"),
                    str(vol / "snap")], check=True, capture_output=True)
    (vol / "recv").mkdir()
    send = subprocess.Popen(["btrfs", "send", "-q", str(vol / "snap")],
                            stdout=subprocess.PIPE)
    subprocess.run(["btrfs", "receive", "-q", str(vol / "recv")], stdin=send.stdout,
                   check=True, capture_output=True)
    assert send.wait() == 0
    received = vol / "recv" / "snap"

    def props() -> tuple[str, str]:
        ro = subprocess.run(["btrfs", "property", "get", "-ts", str(received), "ro"],
                            capture_output=True, text=True, check=True).stdout.strip()
        show = subprocess.run(["btrfs", "subvolume", "show", str(received)],
                              capture_output=True, text=True, check=True).stdout
        uuid = next(line for line in show.splitlines() if "Received UUID" in line)
        return ro, uuid

    before, content = props(), digests(vol)
    recv_file = received / "g000" / "c0.jpg"
    recv_map = _extents(recv_file)
    assert before[0] == "ro=true"
    r = run_pass(store, vol)  # default: snapshots are not even walked
    assert r.counters["snapshots_skipped"] == 2 and r.counters["hits"] == 4
    assert all("/recv/" not in p and "/snap/" not in p
               for a in r.actions for p in [a["reference"], *a["paths"]])
    r2 = run_pass(store, vol, dedup_snapshots=True, force_rescan=True)
    assert not [p for p in r2.problems if p["reason"] == "error"], r2.problems
    assert r2.counters.get("skips_readonly", 0) > 0
    for a in r2.actions:  # snapshot files appear only as references
        assert not any("/recv/" in p or "/snap/" in p for p in a["paths"])
    assert props() == before
    assert digests(vol) == content
    assert _extents(recv_file) == recv_map


def test_snapshot_file_is_the_source(vol: Path, store: Store) -> None:
    """Only a read-only snapshot holds the old copy: the live file is deduped onto it."""
    subprocess.run(["btrfs", "subvolume", "create", str(vol / "old")], check=True,
                   capture_output=True)
    data = write_random(vol / "old" / "a.jpg", 48 * BLOCK, 21)
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(vol / "old"),
                    str(vol / "snap")], check=True, capture_output=True)
    subprocess.run(["btrfs", "subvolume", "delete", str(vol / "old")], check=True,
                   capture_output=True)
    time.sleep(0.05)
    (vol / "live").mkdir()
    (vol / "live" / "a.jpg").write_bytes(data)
    r = run_pass(store, vol, dedup_snapshots=True)
    assert r.counters.get("hits") == 1, (r.counters, r.problems)
    assert r.actions[0]["reference"].endswith("/snap/a.jpg")
    assert fiemap.same_extents(_extents(vol / "snap" / "a.jpg"), _extents(vol / "live" / "a.jpg"))
    ro = subprocess.run(["btrfs", "property", "get", "-ts", str(vol / "snap"), "ro"],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert ro == "ro=true"
    assert (vol / "live" / "a.jpg").read_bytes() == data


def _extents(path: Path) -> list[fiemap.Extent]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return fiemap.extents(fd)
    finally:
        os.close(fd)


def test_file_being_appended_waits_until_it_settles(vol: Path, store: Store) -> None:
    data = write_random(vol / "done.bin", 256 * BLOCK, 7)
    growing = vol / "growing.bin"
    growing.write_bytes(data[: 64 * BLOCK])
    stop = threading.Event()

    def append() -> None:
        with open(growing, "ab") as f:
            for k in range(64, 256, 16):
                if stop.is_set():
                    return
                f.write(data[k * BLOCK:(k + 16) * BLOCK])
                f.flush()
                time.sleep(0.25)

    t = threading.Thread(target=append)
    t.start()
    try:
        time.sleep(0.3)
        r1 = run_pass(store, vol, settle_seconds=2)
        assert r1.counters.get("hits", 0) == 0
    finally:
        t.join()
        stop.set()
    assert growing.read_bytes() == data
    r2 = run_pass(store, vol, settle_seconds=2)  # just finished: still settling
    assert r2.counters.get("hits", 0) == 0 and r2.counters.get("files_pending", 0) >= 1
    time.sleep(4.5)  # settle_seconds doubled once for a file seen changing again
    r3 = run_pass(store, vol, settle_seconds=2)
    assert r3.counters.get("hits", 0) == 1, (r3.counters, r3.problems)
    assert growing.read_bytes() == data


def test_group_of_130_members(vol: Path, store: Store) -> None:
    first = vol / "many" / "x000.jpg"
    write_random(first, 4 * BLOCK, 11)
    for k in range(1, 130):
        copy_fresh(first, vol / "many" / f"x{k:03d}.jpg")
    _, disk0 = btrfs_data_bytes(vol)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    gc.collect()  # earlier tests' unreferenced objects are not this pass's open files
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, hard))  # group > open-files limit
    try:
        r = run_pass(store, vol, dedup_batch_size=60)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert r.counters["hits"] == 129 and r.counters["dedupe_calls"] == 3, r.problems[:2]
    assert disk0 - btrfs_data_bytes(vol)[1] == 129 * 4 * BLOCK
    run_pass(store, vol)
    copy_fresh(first, vol / "many" / "x130.jpg")  # the 131st copy: deduped alone
    r = run_pass(store, vol)
    assert r.counters["tries"] == 1 and r.counters["hits"] == 1
    assert r.counters["skips_done"] == 129
    assert r.actions[0]["reference"] == str(first) and len(r.actions[0]["paths"]) == 1


@pytest.mark.parametrize("backend", ["ioctl", "duperemove"])
def test_group_with_over_a_megabyte_of_path_names(vol: Path, store: Store,
                                                  backend: str) -> None:
    require_tools("duperemove")
    deep = vol
    for k in range(14):  # ~3.5 KiB of directory names
        deep = deep / (f"{k:02d}" + "d" * 240)
    deep.mkdir(parents=True)
    first = deep / ("f" * 200 + "0000")
    write_random(first, 2 * BLOCK, 12)
    n = 300
    for k in range(1, n):
        copy_fresh(first, deep / ("f" * 200 + f"{k:04d}"))
    assert sum(len(os.fsencode(p)) for p in deep.iterdir()) > 1024 * 1024
    r = run_pass(store, vol, dedup_backend=backend)
    assert r.counters.get("hits") == n - 1, (r.counters, r.problems[:3])


def test_second_instance_gets_a_clear_error(vol: Path, tmp_path: Path) -> None:
    with volume_lock(os.fsencode(vol)):
        p = subprocess.run([sys.executable, "-m", "dedupd", "run", "--once", "--settle", "0",
                            "--db", f"sqlite:///{tmp_path}/other.db", str(vol)],
                           capture_output=True, text=True)
    assert p.returncode == 75, p.stderr
    assert "another dedupd pass or recovery is working on this volume" in p.stderr


def test_dry_run_does_not_advance_the_generation(vol: Path, store: Store) -> None:
    run_pass(store, vol)  # first real pass: nothing yet
    make_groups(vol / "later", groups=2, copies=2, size_blocks=8)
    dry = run_pass(store, vol, dry_run=True)
    assert len(dry.actions) == 2 and dry.counters.get("full_scans", 0) == 0
    real = run_pass(store, vol)
    assert real.counters.get("hits") == 2, real.counters


def test_kill_9_mid_pass_loses_nothing(vol: Path, store: Store, tmp_path: Path) -> None:
    dup = make_groups(vol / "p", groups=40, copies=3, size_blocks=256)
    before = digests(vol)
    _, disk0 = btrfs_data_bytes(vol)
    db = f"sqlite:///{tmp_path}/killed.db"
    argv = [sys.executable, "-m", "dedupd", "run", "--once", "--settle", "0", "--db", db,
            str(vol)]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and btrfs_data_bytes(vol)[1] == disk0:
        time.sleep(0.02)  # wait until some dedupe has happened
    p.kill()
    p.wait()
    assert digests(vol) == before
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert digests(vol) == before
    assert abs((disk0 - btrfs_data_bytes(vol)[1]) - dup) <= dup * 0.01


def test_postgresql_index(vol: Path, pg_url: str) -> None:
    """The same pass against the shared-inventory backend."""
    pg = Store(pg_url)
    try:
        dup = make_groups(vol / "p", groups=3, copies=3, size_blocks=16)
        _, disk0 = btrfs_data_bytes(vol)
        r = run_pass(pg, vol)
        assert r.counters["hits"] == 6, r.problems
        assert abs((disk0 - btrfs_data_bytes(vol)[1]) - dup) <= dup * 0.01
        again = run_pass(pg, vol)
        assert again.actions == () and again.counters.get("bytes_read", 0) == 0
    finally:
        pg.close()


def test_newline_names_with_the_duperemove_backend(vol: Path, store: Store) -> None:
    require_tools("duperemove")
    data = write_random(vol / "plain.jpg", 8 * BLOCK, 31)
    (vol / "odd\nname.jpg").write_bytes(data)
    (vol / "other.jpg").write_bytes(data)
    r = run_pass(store, vol, dedup_backend="duperemove")
    assert r.counters.get("hits") == 2, (r.counters, r.problems)


def test_stats_command_reports_the_last_pass(vol: Path, tmp_path: Path) -> None:
    make_groups(vol / "p", groups=2, copies=2, size_blocks=8)
    db = f"sqlite:///{tmp_path}/cli.db"
    base = [sys.executable, "-m", "dedupd"]
    subprocess.run([*base, "run", "--once", "--settle", "0", "--db", db, str(vol)],
                   check=True, capture_output=True)
    out = subprocess.run([*base, "stats", "--json", "--db", db, str(vol)], check=True,
                         capture_output=True, text=True).stdout
    doc = json.loads(out)
    assert doc["files_indexed"] == 4 and doc["duplicate_groups"] == 2
    assert doc["files_deduped"] == 2 and doc["bytes_deduped"] == (8 + 9) * BLOCK
    assert doc["last_generation"] > 0 and doc["last_full_scan"] is not None
    assert doc["last_pass"]["counters"]["files_examined"] == 4
    text = subprocess.run([*base, "stats", "--db", db, str(vol)], check=True,
                          capture_output=True, text=True).stdout
    assert "duplicate groups  2" in text and "last generation" in text


def test_without_cap_sys_admin_every_pass_walks(vol: Path, tmp_path: Path) -> None:
    """Tree searches need CAP_SYS_ADMIN; without it dedupd walks and still dedupes."""
    require_tools("setpriv")
    make_groups(vol / "p", groups=2, copies=2, size_blocks=8)
    db = f"sqlite:///{tmp_path}/nocap.db"
    argv = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin",
            sys.executable, "-m", "dedupd", "run", "--once", "--json", "--settle", "0",
            "--db", db, str(vol)]
    for _ in range(2):
        p = subprocess.run(argv, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        counters = json.loads(p.stdout)["volumes"][0]["counters"]
        assert counters["full_scans"] == 1
    assert counters.get("skips_done") == 2 and counters.get("bytes_read", 0) == 0


def test_btrfs_kind_on_another_filesystem_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[volumes.x]\nkind = "btrfs"\npath = "{tmp_path}"\n')
    p = subprocess.run([sys.executable, "-m", "dedupd", "run", "--once", "-c", str(cfg),
                        "--db", f"sqlite:///{tmp_path}/x.db"], capture_output=True, text=True)
    if subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)],
                                 capture_output=True, text=True).stdout.strip() == "btrfs":
        pytest.skip("the temp dir is on BTRFS here")
    assert p.returncode == 78 and "not on a BTRFS filesystem" in p.stderr, p.stderr


def test_maintenance_vacuums_and_reverifies(vol: Path, store: Store) -> None:
    make_groups(vol / "p", groups=2, copies=2, size_blocks=8)
    run_pass(store, vol)  # first pass: starts the maintenance clocks
    r = run_pass(store, vol, force_rescan=True, vacuum_interval_days=0.0,
                 dedup_reset_interval_days=0.0)
    assert r.counters.get("vacuums") == 1
    assert r.counters.get("done_reset") == 2
    # forgotten done marks are found again by FIEMAP, never deduped twice
    r = run_pass(store, vol, force_rescan=True)
    assert r.counters.get("skips_already_shared") == 2 and not r.counters.get("tries")


def test_immutable_file_is_left_alone(vol: Path, store: Store) -> None:
    require_tools("chattr")
    data = write_random(vol / "a.jpg", 16 * BLOCK, 41)
    (vol / "b.jpg").write_bytes(data)
    (vol / "c.jpg").write_bytes(data)
    subprocess.run(["chattr", "+i", str(vol / "c.jpg")], check=True)
    try:
        r = run_pass(store, vol)
        assert r.counters.get("hits") == 1
        assert [p["path"] for p in r.problems] == [str(vol / "c.jpg")]
        assert not fiemap.same_extents(_extents(vol / "a.jpg"), _extents(vol / "c.jpg"))
        assert (vol / "c.jpg").read_bytes() == data
    finally:
        subprocess.run(["chattr", "-i", str(vol / "c.jpg")], check=False)


def test_missing_volume_path_is_temporary(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[volumes.gone]\nkind = "btrfs"\npath = "{tmp_path}/not-mounted"\n')
    p = subprocess.run([sys.executable, "-m", "dedupd", "run", "--once", "-c", str(cfg),
                        "--db", f"sqlite:///{tmp_path}/x.db"], capture_output=True, text=True)
    assert p.returncode == 75 and "not mounted yet?" in p.stderr, p.stderr
