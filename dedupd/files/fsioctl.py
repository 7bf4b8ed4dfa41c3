"""Filesystem ioctls that name a filesystem, through fcntl.ioctl (no tools needed).

The ioctl number encoding (asm-generic/ioctl.h) and the BTRFS lookups that
identity needs live here, on the ground floor; dedupd/volumes/btrfs_ioctl.py
builds its change-tracking ioctls on `ioc` and `ino_lookup`. Layouts follow
include/uapi/linux/fs.h and include/uapi/linux/btrfs.h. None of these needs
CAP_SYS_ADMIN.
"""

from __future__ import annotations

import errno
import fcntl
import struct

IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2
BTRFS_MAGIC = 0x94
FS_MAGIC = 0x15  # the generic FS_IOC_* ioctls of include/uapi/linux/fs.h
FIRST_FREE_OBJECTID = 256  # inode number of every BTRFS subvolume's root directory


def ioc(direction: int, magic: int, nr: int, size: int) -> int:
    """_IOC(dir, type, nr, size) as the kernel encodes it."""
    return (direction << 30) | (size << 16) | (magic << 8) | nr


IOC_INO_LOOKUP = ioc(IOC_READ | IOC_WRITE, BTRFS_MAGIC, 18, 4096)
IOC_FS_INFO = ioc(IOC_READ, BTRFS_MAGIC, 31, 1024)
# struct fsuuid2 { __u8 len; __u8 uuid[16]; } (kernel >= 6.8)
FS_IOC_GETFSUUID = ioc(IOC_READ, FS_MAGIC, 0, 17)


def ino_lookup(fd: int, treeid: int, objectid: int) -> tuple[int, bytes]:
    """BTRFS_IOC_INO_LOOKUP: (tree id, path of directory objectid inside that tree:
    b'' for its root, else b'a/b/'). treeid 0 means the subvolume holding fd, and
    then the kernel answers the tree id it used. A lookup of the subvolume root
    (FIRST_FREE_OBJECTID) needs no privilege; any other objectid needs CAP_SYS_ADMIN."""
    buf = bytearray(4096)
    struct.pack_into("=QQ", buf, 0, treeid, objectid)
    fcntl.ioctl(fd, IOC_INO_LOOKUP, buf, True)
    return int(struct.unpack_from("=Q", buf, 0)[0]), bytes(buf[16:]).split(b"\0", 1)[0]


def btrfs_subvol_id(fd: int) -> int:
    """The tree id (subvolume id, 5 for the top level) of the subvolume holding fd."""
    return ino_lookup(fd, 0, FIRST_FREE_OBJECTID)[0]


def btrfs_fsid(fd: int) -> bytes:
    """BTRFS_IOC_FS_INFO: the filesystem UUID (16 bytes, what `blkid` shows as UUID)."""
    buf = bytearray(1024)
    fcntl.ioctl(fd, IOC_FS_INFO, buf, True)
    return bytes(buf[16:32])  # after __u64 max_id, __u64 num_devices


def fs_uuid(fd: int) -> bytes | None:
    """FS_IOC_GETFSUUID: the superblock UUID the filesystem exports, None when it
    exports none (ENOTTY: older kernel or a filesystem without one). Beware: tmpfs
    answers with a random UUID made at mount time; callers decide which fstypes
    have a UUID that survives a remount."""
    buf = bytearray(17)
    buf[0] = 16
    try:
        fcntl.ioctl(fd, FS_IOC_GETFSUUID, buf, True)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            return None
        raise
    n = min(buf[0], 16)
    return bytes(buf[1:1 + n]) if n else None
