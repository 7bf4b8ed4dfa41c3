"""Which ZFS dataset a volume is: read from the kernel's mount table, not from zfs.

The `mountpoint` property says where a dataset *would* be mounted; it is
`legacy` or `none` for datasets mounted by fstab (NixOS and many root-on-ZFS
layouts), several boot environments (`canmount=noauto`) share `/`, and a legacy
child can be mounted under its parent's mountpoint. What is actually mounted
at a path is in /proc/self/mountinfo: fstype `zfs` (OpenZFS) or `fuse.zfs`
(zfs-fuse), and the mount source is the dataset name.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from dedupd.errors import DedupdError
from dedupd.scan.walk import unescape_mount

ZFS_FSTYPES = ("zfs", "fuse.zfs")
MOUNTINFO = "/proc/self/mountinfo"


class NotZfs(DedupdError):
    """The volume's path is not on a mounted ZFS dataset."""


@dataclass(frozen=True)
class Mount:
    mountpoint: bytes
    fstype: str
    source: str

    @property
    def is_zfs(self) -> bool:
        return self.fstype in ZFS_FSTYPES

    @property
    def dataset(self) -> str:
        return self.source


def parse_mountinfo(text: bytes) -> list[Mount]:
    """Mounts in table order (later lines are mounted over earlier ones)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)  # optional fields end with a lone "-"
            mnt, fstype, source = fields[4], fields[sep + 1], fields[sep + 2]
        except (ValueError, IndexError):
            continue
        mounts.append(Mount(unescape_mount(mnt), os.fsdecode(unescape_mount(fstype)),
                            os.fsdecode(unescape_mount(source))))
    return mounts


def read_mounts() -> list[Mount]:
    with open(MOUNTINFO, "rb") as f:
        return parse_mountinfo(f.read())


def _below(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top.rstrip(b"/") + b"/")


def mount_of(path: str | bytes | os.PathLike[str], mounts: list[Mount] | None = None) -> Mount:
    """The mount that holds path: the longest mount point above it, the last one
    mounted when several share that point (the one a lookup reaches)."""
    real = os.path.realpath(os.fsencode(path))
    best: Mount | None = None
    for m in read_mounts() if mounts is None else mounts:
        if _below(real, m.mountpoint) and (best is None
                                           or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    if best is None:
        raise NotZfs(f"{os.fsdecode(real)}: no mount holds this path")
    return best


def dataset_for(path: str | bytes | os.PathLike[str], mounts: list[Mount] | None = None) -> Mount:
    """The mounted ZFS dataset holding path; NotZfs when that mount is not ZFS."""
    m = mount_of(path, mounts)
    if not m.is_zfs:
        raise NotZfs(f"{os.fsdecode(path)} is on a {m.fstype} mount ({m.source} at "
                     f"{os.fsdecode(m.mountpoint)}), not on a ZFS dataset")
    return m


def mounts_below(root: bytes, mounts: list[Mount] | None = None) -> list[Mount]:
    """Mounts strictly below root (what a walk with cross_mounts would enter)."""
    real = os.path.realpath(root)
    return [m for m in (read_mounts() if mounts is None else mounts)
            if m.mountpoint != real and _below(m.mountpoint, real)]


def snapdir_excludes(datasets: list[Mount]) -> tuple[str, ...]:
    """Walk exclude patterns for `.zfs` at each dataset's root: with snapdir=visible
    readdir lists it, and below it every snapshot (dedupd's own included) would be
    walked and hashed as another copy of the tree. A `.zfs` deeper down is an
    ordinary directory and stays."""
    return tuple(glob.escape(os.fsdecode(m.mountpoint.rstrip(b"/") + b"/.zfs"))
                 for m in datasets if m.is_zfs)
