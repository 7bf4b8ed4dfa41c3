"""Volumes named on the command line: find the filesystem kind of a path."""

from __future__ import annotations

import os
import re
from pathlib import Path

from dedupd.config import DESTRUCTIVE_KINDS, VolumeConfig
from dedupd.files import mounts


def mount_of(path: str | os.PathLike[str]) -> tuple[bytes, str]:
    """(mount point, filesystem type) of the mount that holds path, from
    /proc/self/mountinfo (the last, i.e. topmost, of stacked mounts wins)."""
    m = mounts.mount_of_path(path)
    return (b"", "unknown") if m is None else (m.mountpoint, m.fstype)


def fs_type(path: str | os.PathLike[str]) -> str:
    """The filesystem type of the mount that holds path (from /proc/self/mountinfo)."""
    return mount_of(path)[1]


def mergerfs_branches(mount: bytes) -> tuple[bytes, ...]:
    """The branches of the mergerfs pool mounted at `mount`, read from the extended
    attributes of its control file (`.mergerfs`): `user.mergerfs.branches`
    ("/b1=RW:/b2=RO"), or `srcmounts` on old versions. () when unreadable."""
    ctl = os.path.join(mount, b".mergerfs")
    for attr in ("user.mergerfs.branches", "user.mergerfs.srcmounts"):
        try:
            raw = os.getxattr(ctl, attr)
        except OSError:
            continue
        return tuple(b.rsplit(b"=", 1)[0] if b"=" in b else b
                     for b in raw.strip(b"\0").split(b":") if b)
    return ()


def kind_for(path: str | os.PathLike[str]) -> str:
    t = fs_type(path)
    if t in ("btrfs", "xfs", "zfs"):
        return t
    if t in mounts.ZFS_FSTYPES or (t.startswith("fuse") and "zfs" in t):
        return "zfs"
    return "plain"


def volume_for_path(path: str, settle_seconds: int = 300, min_size: int = 8192) -> VolumeConfig:
    """An ad-hoc volume for a path given on the command line."""
    real = Path(os.path.realpath(path))
    kind = kind_for(real)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(real).strip("/")) or "root"
    mode = "dry-run" if kind in DESTRUCTIVE_KINDS else "apply"
    return VolumeConfig(name=name, kind=kind, path=real, settle_seconds=settle_seconds,
                        min_size=min_size, mode=mode)
