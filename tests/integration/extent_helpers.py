"""Helpers for the BTRFS/XFS integration tests: make files, run a pass, measure."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import subprocess
from pathlib import Path
from typing import Any

from dedupd.index.store import Store
from dedupd.volumes import PassOptions, PassReport, make_pass
from dedupd.volumes.detect import volume_for_path

BLOCK = 4096


def write_random(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def copy_fresh(src: Path, dst: Path) -> None:
    """A duplicate that shares nothing yet (cp would reflink on BTRFS)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "--reflink=never", str(src), str(dst)], check=True)


def run_pass(store: Store, path: Path, **over: Any) -> PassReport:
    opts = PassOptions(dry_run=over.pop("dry_run", False),
                       force_rescan=over.pop("force_rescan", False))
    vol = dataclasses.replace(volume_for_path(str(path), settle_seconds=0, min_size=1), **over)
    vp = make_pass(vol, store, opts)
    for _ in vp.steps():
        pass
    return vp.report()


def sync_fs(path: Path) -> None:
    subprocess.run(["sync", "-f", str(path)], check=True)
    if subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                      text=True).stdout.strip() == "btrfs":
        subprocess.run(["btrfs", "filesystem", "sync", str(path)], check=True,
                       capture_output=True)


def btrfs_data_bytes(path: Path) -> tuple[int, int]:
    """(total logical bytes, bytes of disk they use) from `btrfs filesystem du`."""
    sync_fs(path)
    out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", str(path)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    total, excl, shared = (int(x) for x in out[-1].split()[:3])
    return total, excl + shared


def used_bytes(path: Path) -> int:
    sync_fs(path)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def digests(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def make_groups(root: Path, groups: int, copies: int, size_blocks: int,
                seed: int = 1) -> int:
    """groups x copies identical files (block-multiple sizes); returns duplicate bytes."""
    dup = 0
    for g in range(groups):
        size = (size_blocks + g) * BLOCK
        first = root / f"g{g:03d}" / "c0.jpg"
        write_random(first, size, seed * 10_000 + g)
        for c in range(1, copies):
            copy_fresh(first, root / f"g{g:03d}" / f"c{c}.jpg")
        dup += size * (copies - 1)
    return dup
