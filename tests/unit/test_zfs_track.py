"""ZFS change tracking without ZFS: the mount table and the diff-to-work plan."""

from __future__ import annotations

import pytest

from dedupd.files.mounts import mounts_below
from dedupd.files.mounts import parse as parse_mountinfo
from dedupd.volumes.zfs_diff import parse_diff
from dedupd.volumes.zfs_mounts import NotZfs, dataset_for, snapdir_excludes
from dedupd.volumes.zfs_track import plan

# /proc/self/mountinfo lines as the kernel writes them (optional fields, "-",
# fstype, source, super options; octal escapes in paths).
MOUNTINFO = b"""\
22 1 0:21 / / rw,relatime shared:1 - zfs rpool/ROOT/be-old rw,xattr,posixacl
23 1 0:22 / / rw,relatime shared:2 - zfs rpool/ROOT/be-new rw,xattr,posixacl
30 23 0:30 / /srv/data rw,relatime shared:9 - zfs tank/data rw,xattr
31 30 0:31 / /srv/data/photos rw,relatime shared:10 - zfs tank/legacy-photos rw,xattr
32 30 0:32 / /srv/data/with\\040space rw - zfs tank/spaced rw
33 23 0:33 / /mnt/fuse rw,relatime - fuse.zfs pool/ds rw,user_id=0
34 23 8:1 / /mnt/ext rw,relatime - ext4 /dev/sda1 rw
"""


def test_the_dataset_is_what_is_mounted_not_the_mountpoint_property() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    # A legacy child mounted under its parent's mount point: the child, not the parent.
    assert dataset_for("/srv/data/photos/2020/x.jpg", mounts).dataset == "tank/legacy-photos"
    assert dataset_for("/srv/data/other", mounts).dataset == "tank/data"
    # Two boot environments share /: the one mounted last is the one a lookup reaches.
    assert dataset_for("/etc", mounts).dataset == "rpool/ROOT/be-new"
    assert dataset_for("/srv/data/with space/f", mounts).mountpoint == b"/srv/data/with space"
    assert dataset_for("/mnt/fuse/a", mounts).dataset == "pool/ds"  # zfs-fuse
    with pytest.raises(NotZfs, match="ext4"):
        dataset_for("/mnt/ext/f", mounts)


def test_child_mounts_and_snapdir_excludes() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    below = mounts_below(b"/srv/data", mounts)
    assert [m.dataset for m in below] == ["tank/legacy-photos", "tank/spaced"]
    top = dataset_for("/srv/data", mounts)
    assert snapdir_excludes([top, *below]) == (
        "/srv/data/.zfs", "/srv/data/photos/.zfs", "/srv/data/with space/.zfs")
    assert snapdir_excludes([dataset_for("/", mounts)]) == ("/.zfs",)


def test_plan_relists_directories_whose_names_changed() -> None:
    """What OpenZFS prints after dedupd linked /t/d2/b.bin to /t/d1/a.bin: the kept
    inode under its old name with (+1), b's freed inode, and d2 modified."""
    out = parse_diff(b"\n".join([
        b"1.0\tM\t/\t/t/",
        b"2.0\tM\t/\t/t/d2",
        b"3.0\tM\tF\t/t/d1/a.bin\t(+1)",
        b"4.0\t-\tF\t/t/d2/b.bin",
        b"5.0\t+\t/\t/t/new\\0040dir",
        b"6.0\tR\t/\t/t/old\t/t/moved",
        b"7.0\tR\tF\t/t/d3/c\t/t/d4/c",
        b"8.0\tM\tF\t/t/d5/edited",
    ]))
    cp = plan(out)
    assert cp.relist == (b"/t", b"/t/d1", b"/t/d2", b"/t/d3", b"/t/d4")
    assert cp.files == (b"/t/d1/a.bin", b"/t/d2/b.bin", b"/t/d3/c", b"/t/d4/c",
                        b"/t/d5/edited")
    assert cp.walk == (b"/t/moved", b"/t/new dir")
    assert cp.gone_dirs == (b"/t/old",)
