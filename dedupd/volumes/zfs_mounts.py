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

from dedupd.errors import DedupdError
from dedupd.files import mounts as mtab
from dedupd.files.mounts import Mount


class NotZfs(DedupdError):
    """The volume's path is not on a mounted ZFS dataset."""


def mount_of(path: str | bytes | os.PathLike[str], mounts: list[Mount] | None = None) -> Mount:
    """The mount that holds path (files.mounts.mount_of_path); NotZfs when none does."""
    m = mtab.mount_of_path(path, mounts)
    if m is None:
        raise NotZfs(f"{os.fsdecode(os.path.realpath(os.fsencode(path)))}: "
                     "no mount holds this path")
    return m


def dataset_for(path: str | bytes | os.PathLike[str], mounts: list[Mount] | None = None) -> Mount:
    """The mounted ZFS dataset holding path; NotZfs when that mount is not ZFS."""
    m = mount_of(path, mounts)
    if not m.is_zfs:
        raise NotZfs(f"{os.fsdecode(path)} is on a {m.fstype} mount ({m.source} at "
                     f"{os.fsdecode(m.mountpoint)}), not on a ZFS dataset")
    return m


def snapdir_excludes(datasets: list[Mount]) -> tuple[str, ...]:
    """Walk exclude patterns for `.zfs` at each dataset's root: with snapdir=visible
    readdir lists it, and below it every snapshot (dedupd's own included) would be
    walked and hashed as another copy of the tree. A `.zfs` deeper down is an
    ordinary directory and stays."""
    return tuple(glob.escape(os.fsdecode(m.mountpoint.rstrip(b"/") + b"/.zfs"))
                 for m in datasets if m.is_zfs)
