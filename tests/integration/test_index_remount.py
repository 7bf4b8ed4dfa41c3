"""Remounts that shift device numbers (issue #13): a BTRFS subvolume and a zfs-fuse
dataset, unmounted and mounted again after other mounts took the numbers they
had. The index keys files by filesystem identity, so a rescan reads 0 bytes and
reports the same groups, and a volume pass looks only at what changed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dedupd.index.store import Store
from tests.fixtures.components import require_tools
from tests.fixtures.loopfs import loopfs, unmount  # noqa: F401
from tests.fixtures.zfs import Pool, zfs_daemon, zpool  # noqa: F401
from tests.integration.extent_helpers import run_pass
from tests.oracles import scan_json

pytestmark = pytest.mark.integration


def _tree(root: Path) -> None:
    for k in range(5):
        d = root / f"d{k}"
        d.mkdir(parents=True)
        (d / "same.bin").write_bytes(b"same" * 6000)
        (d / f"own{k}.bin").write_bytes(bytes([k + 1]) * (9000 + k))
        (d / "pair.bin").write_bytes(b"q%d" % (k % 2) * 4000)


def _groups(doc: dict[str, object]) -> list[list[str]]:
    return sorted(sorted(g["paths"]) for g in doc["groups"])  # type: ignore[attr-defined]


@contextlib.contextmanager
def _numbers_taken(n: int = 2, holding: int | None = None) -> Iterator[None]:
    """n tmpfs mounts: each takes an anonymous device number while it lasts; with
    `holding`, more until one of them took that number (the kernel hands out the
    lowest free one, and earlier tests may have left lower ones free)."""
    base = Path(tempfile.mkdtemp(prefix="dedupd-hold-"))
    held: list[Path] = []
    try:
        while len(held) < n or (holding is not None and len(held) < 64
                                and holding not in {os.stat(d).st_dev for d in held}):
            d = base / str(len(held))
            d.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "hold", str(d)],
                           check=True)
            held.append(d)
        yield
    finally:
        for d in held:
            unmount(d)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True,
                          timeout=120).stdout


def test_btrfs_subvolume_remounted_with_another_device_number(
        tmp_path: Path, loopfs: Callable[[str, str], Path]) -> None:  # noqa: F811
    require_tools("btrfs")
    top = loopfs("btrfs", "1G")
    subprocess.run(["btrfs", "subvolume", "create", str(top / "sv")], check=True,
                   capture_output=True)
    _tree(top / "sv" / "photos")
    store_url = f"sqlite:///{tmp_path}/i.db"
    first = scan_json(top / "sv" / "photos", db=store_url)
    store = Store(store_url)
    before_pass = run_pass(store, top)
    os.sync()
    run_pass(store, top)  # sees the inodes the dedupe itself rewrote, and settles
    store.close()
    assert before_pass.counters["hits"] >= 2
    dev = os.stat(top / "sv").st_dev
    img = top.parent / "btrfs.img"
    with _numbers_taken():
        unmount(top)
        with _numbers_taken(holding=dev):
            subprocess.run(["mount", "-o", "loop", str(img), str(top)], check=True)
            # btrfs gives a subvolume its number when it is first looked up: here,
            # while the held numbers still keep it off the one it had
            now = os.stat(top / "sv").st_dev
    assert now != dev
    again = scan_json(top / "sv" / "photos", db=store_url)
    assert again["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert _groups(again) == _groups(first)
    (top / "sv" / "photos" / "d0" / "new.bin").write_bytes(b"n" * 50_000)
    (top / "sv" / "photos" / "d1" / "new.bin").write_bytes(b"n" * 50_000)
    store = Store(store_url)
    after = run_pass(store, top)
    store.close()
    assert after.counters["files_examined"] <= 4, after.counters
    assert after.counters["bytes_read"] <= 2 * 50_000, after.counters
    assert after.counters["hits"] == 1


def test_zfs_fuse_dataset_remounted_with_another_device_number(
        tmp_path: Path, zpool: Callable[..., Pool]) -> None:  # noqa: F811
    pool = zpool("256M")
    ds = pool.dataset("data")
    _zfs("create", ds)
    root = pool.mountpoint / "data"
    _tree(root / "photos")
    store_url = f"sqlite:///{tmp_path}/i.db"
    first = scan_json(root / "photos", db=store_url)
    store = Store(store_url)
    before = run_pass(store, root)  # a zfs volume defaults to dry-run: groups stay
    store.close()
    dev = os.stat(root).st_dev
    with _numbers_taken():
        _zfs("unmount", ds)
        with _numbers_taken(holding=dev):
            _zfs("mount", ds)
    assert os.stat(root).st_dev != dev
    again = scan_json(root / "photos", db=store_url)
    assert again["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert _groups(again) == _groups(first)
    (root / "photos" / "d0" / "new.bin").write_bytes(b"z" * 50_000)
    (root / "photos" / "d1" / "new.bin").write_bytes(b"z" * 50_000)
    store = Store(store_url)
    after = run_pass(store, root)
    store.close()
    assert after.counters["files_new"] == 2, after.counters
    assert after.counters["bytes_read"] <= 2 * 50_000, after.counters
    assert after.counters["hits"] == before.counters["hits"] + 1  # the new pair
