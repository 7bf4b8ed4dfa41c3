"""Attacks on the per-directory skip of `dedupd scan` (issue #13): whatever the
index learnt in between, a scan that skips unchanged directories reports what a
fresh scan of the same tree reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan
from tests.fixtures.loopfs import remount_elsewhere, unmount
from tests.integration.extent_helpers import run_pass
from tests.integration.linktree import (
    blob,
    config,
    content,
    dedupd,
    dedupd_here,
    inodes,
    manifest,
    unfinished_ops,
    write,
)
from tests.oracles import scan_json


def _shape(rep: ScanReport) -> list[list[bytes]]:
    return sorted(sorted(f.path for f in g.files) for g in rep.groups)


def _fresh(root: Path, db: Path) -> ScanReport:
    store = Store(f"sqlite:///{db}")
    try:
        return scan(store, [root], ScanOptions())
    finally:
        store.close()


def test_a_volume_pass_with_another_min_size_between_two_scans(tmp_path: Path) -> None:
    # d holds only small files and a subdirectory with a big one: a pass with a
    # bigger min_size forgets d's small files without writing into d
    root = tmp_path / "t"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "s1.bin").write_bytes(b"s" * 300)
    (root / "d" / "s2.bin").write_bytes(b"s" * 300)
    (root / "d" / "sub" / "big.bin").write_bytes(b"b" * 20000)
    (root / "d" / "sub" / "big2.bin").write_bytes(b"b" * 20000)
    store = Store(f"sqlite:///{tmp_path}/i.db")
    first = scan(store, [root], ScanOptions())
    assert len(first.groups) == 2
    run_pass(store, root, min_size=8192, dry_run=True, kind="plain")
    again = scan(store, [root], ScanOptions())
    assert _shape(again) == _shape(_fresh(root, tmp_path / "fresh.db")) == _shape(first)
    store.close()


def test_a_btrfs_subvolume_replaced_by_its_snapshot_at_the_same_path(
        loopfs: Callable[..., Path], tmp_path: Path) -> None:
    # A snapshot has the same inode numbers, sizes and times as its source: every
    # listing digest matches, but the files are now on another filesystem.
    mnt = loopfs("btrfs", "512M")
    subprocess.run(["btrfs", "subvolume", "create", str(mnt / "data")], check=True,
                   capture_output=True)
    root = mnt / "data"
    for d in ("a", "b"):
        (root / d).mkdir()
        (root / d / "same.bin").write_bytes(b"x" * 9000)
        (root / d / f"own-{d}.bin").write_bytes(d.encode() * 7000)
    store = Store(f"sqlite:///{tmp_path}/i.db")
    first = scan(store, [root], ScanOptions())
    assert len(first.groups) == 1
    os.rename(root, mnt / "data.old")
    subprocess.run(["btrfs", "subvolume", "snapshot", str(mnt / "data.old"), str(root)],
                   check=True, capture_output=True)
    store.close()
    store = Store(f"sqlite:///{tmp_path}/i.db")  # a new run, as `dedupd scan` is
    again = scan(store, [root], ScanOptions())
    assert _shape(again) == _shape(_fresh(root, tmp_path / "fresh.db")) == _shape(first)
    # the names are now on the snapshot's filesystem, not the old subvolume's
    store.close()



def _tmpfs(at: Path) -> int:
    at.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(at)], check=True)
    return os.stat(at).st_dev


def test_a_device_number_reused_by_another_filesystem_in_a_long_lived_store(
        tmp_path: Path) -> None:
    # The daemon's step process keeps one Store for weeks: a filesystem unmounted,
    # and another mounted that takes its anonymous device number (the kernel hands
    # out the lowest free one), must not be filed under the first one's identity.
    store = Store(f"sqlite:///{tmp_path}/i.db")
    a, b = tmp_path / "a", tmp_path / "b"
    try:
        for _attempt in range(5):
            dev = _tmpfs(a)
            (a / "x.bin").write_bytes(b"a" * 5000)
            (a / "y.bin").write_bytes(b"a" * 5000)
            assert len(scan(store, [a], ScanOptions()).groups) == 1
            subprocess.run(["umount", str(a)], check=True)
            if _tmpfs(b) == dev:
                break
            subprocess.run(["umount", str(b)], check=True)
        else:
            raise AssertionError("no device number was reused in 5 tries")
        (b / "x.bin").write_bytes(b"b" * 5000)
        (b / "z.bin").write_bytes(b"b" * 5000)
        rep = scan(store, [b], ScanOptions())
        assert _shape(rep) == [[bytes(b / "x.bin"), bytes(b / "z.bin")]]
        idents = dict(store.db.rows("SELECT d.name, f.ident FROM directories d "
                                    "JOIN filesystems f ON f.id = d.fs"))
        assert idents[b"b"].endswith(os.fsencode(b).decode()), idents
        assert idents.get(b"a", "").endswith(os.fsencode(a).decode()), idents
    finally:
        store.close()
        for m in (a, b):
            if os.path.ismount(m):
                subprocess.run(["umount", str(m)], check=False)


def test_a_vanished_directory_does_not_make_its_filesystem_unreachable(tmp_path: Path) -> None:
    # Recovery asks for each journalled operation's filesystem through the
    # operation's own directory; one the user removed since must not hide the
    # filesystem from the other operations (and the rest of the pass).
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "d" / "x.bin").write_bytes(b"x" * 4000)
    url = f"sqlite:///{tmp_path}/i.db"
    store = Store(url)
    scan(store, [root], ScanOptions())
    store.close()
    store = Store(url)  # a new process: nothing cached
    fs = int(store.db.rows("SELECT id FROM filesystems")[0][0])
    dev = os.stat(root).st_dev
    assert store.dev_of(fs, bytes(root / "removed-since")) == dev
    assert store.dev_of(fs, bytes(root / "d")) == dev
    store.close()


@pytest.mark.parametrize("k", [2, 3, 5])  # after: a temp link, the first swap, a 2nd temp
def test_journal_recovery_after_a_reboot_that_moved_the_device_number(
        loopfs: Callable[..., Path], tmp_path: Path, k: int) -> None:
    # ops are keyed by filesystem id: after `kill -9` mid-batch and a "reboot" that
    # mounts the volume's ext4 on another loop device, recovery must still find
    # every operation's files and finish or roll back each one
    mnt = loopfs("ext4", "64M")
    root = mnt / "vol"
    write(root / "a/x.bin", blob(1, 200_000))
    write(root / "b/x copy.bin", blob(1, 200_000))
    write(root / "a/y.bin", blob(2, 150_000))
    write(root / "b/y.bin", blob(2, 150_000))
    cfg = config(tmp_path, {"v": {"kind": "plain", "path": str(root), "settle_seconds": 0,
                                  "min_size": 1, "mode": "apply"}})
    before = content(manifest(root))
    r = dedupd("run", "--once", "-c", str(cfg), env={"DEDUPD_TEST_KILL_AT_STEP": str(k)},
               check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert unfinished_ops(tmp_path / "index.db")
    dev = os.stat(root).st_dev
    remount_elsewhere(mnt.parent / "ext4.img", mnt)
    assert os.stat(root).st_dev != dev
    rc, out = dedupd_here("recover", "-c", str(cfg), "--json")
    assert rc == 0, out
    assert content(manifest(root)) == before  # every path, original bytes, no temp names
    assert unfinished_ops(tmp_path / "index.db") == []
    assert dedupd_here("run", "--once", "-c", str(cfg))[0] == 0
    ino = inodes(root)
    assert ino["a/x.bin"] == ino["b/x copy.bin"] and ino["a/y.bin"] == ino["b/y.bin"]


def _old_scan(tmp: Path, db: str, root: Path) -> dict[str, Any]:
    """`dedupd scan` of the last release with schema 2 (c9aacac), from git."""
    old = tmp / "old"
    old.mkdir(exist_ok=True)
    arch = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), "archive",
                           "c9aacac", "dedupd"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=arch, check=True)
    r = subprocess.run([sys.executable, "-m", "dedupd", "scan", "--json", "--db", db,
                        str(root)], capture_output=True, cwd=old, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(old)))
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_provisional_rows_are_not_claimed_by_the_empty_mount_point_under_them(
        loopfs: Callable[..., Path], tmp_path: Path) -> None:
    # Upgraded while the disk was away; then something wrote into the bare mount
    # point (a backup job that did not check) and it was scanned: the filesystem
    # under the mount point must not take the disk's rows and hashes.
    mnt = loopfs("ext4", "64M")
    for k in range(4):
        write(mnt / "t" / f"d{k}" / "same.bin", blob(1, 30_000))
        write(mnt / "t" / f"d{k}" / "own.bin", blob(10 + k, 20_000 + k))
    url = f"sqlite:///{tmp_path}/i.db"
    before = _old_scan(tmp_path, url, mnt / "t")
    unmount(mnt)
    Store(url).close()  # the upgrade, while the disk is away
    # one directory of the same name, on the filesystem under the mount point: a
    # full walk of it forgets the disk's names there (they are not there), no more
    write(mnt / "t" / "d0" / "same.bin", blob(2, 30_000))
    write(mnt / "t" / "d0" / "same2.bin", blob(2, 30_000))
    assert scan_json(mnt / "t" / "d0", db=url)["stats"]["bytes_read"] > 0
    subprocess.run(["rm", "-rf", str(mnt / "t")], check=True)
    subprocess.run(["mount", "-o", "loop", str(mnt.parent / "ext4.img"), str(mnt)], check=True)
    again = scan_json(mnt / "t", db=url)
    # d0/same.bin is read again (its name was forgotten); d1-d3 keep their hashes
    assert again["stats"]["bytes_read"] <= 30_000, again["stats"]
    assert sorted(sorted(g["paths"]) for g in again["groups"]) == \
        sorted(sorted(g["paths"]) for g in before["groups"])
