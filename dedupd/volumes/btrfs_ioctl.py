"""BTRFS ioctls used for change tracking, through fcntl.ioctl (no btrfs-progs needed).

Layouts follow include/uapi/linux/btrfs.h and btrfs_tree.h. Tree search and
inode-path lookups need CAP_SYS_ADMIN; GET_SUBVOL_INFO does not.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from dedupd.files.fsioctl import BTRFS_MAGIC, IOC_READ, IOC_WRITE, ioc
from dedupd.files.fsioctl import FIRST_FREE_OBJECTID as FIRST_FREE_OBJECTID
from dedupd.files.fsioctl import ino_lookup as _ino_lookup


def _ioc(direction: int, nr: int, size: int) -> int:
    return ioc(direction, BTRFS_MAGIC, nr, size)


_READ, _WRITE = IOC_READ, IOC_WRITE
IOC_TREE_SEARCH_V2 = _ioc(_READ | _WRITE, 17, 112)
IOC_SYNC = _ioc(0, 8, 0)
IOC_START_SYNC = _ioc(_READ, 24, 8)
IOC_WAIT_SYNC = _ioc(_WRITE, 22, 8)
IOC_INO_PATHS = _ioc(_READ | _WRITE, 35, 56)
IOC_GET_SUBVOL_INFO = _ioc(_READ, 60, 504)
ROOT_SUBVOL_RDONLY = 1 << 0  # btrfs_root_item.flags (also GET_SUBVOL_INFO flags)
INODE_ITEM_KEY = 1
_KEY = struct.Struct("=7Q4I4Q")  # btrfs_ioctl_search_key (104 bytes)
_HDR = struct.Struct("=3Q2I")  # btrfs_ioctl_search_header (32 bytes)
_U64_MAX = (1 << 64) - 1
SEARCH_BUF = 256 * 1024


@dataclass(frozen=True)
class SubvolInfo:
    treeid: int
    name: str
    generation: int
    readonly: bool
    uuid: bytes
    received_uuid: bytes


@dataclass(frozen=True)
class ChangedInode:
    ino: int
    transid: int
    mode: int


def subvol_info(fd: int) -> SubvolInfo:
    """GET_SUBVOL_INFO for the subvolume holding fd (kernel >= 4.18)."""
    buf = bytearray(504)
    fcntl.ioctl(fd, IOC_GET_SUBVOL_INFO, buf, True)
    treeid = struct.unpack_from("=Q", buf, 0)[0]
    name = bytes(buf[8:264]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    generation, flags = struct.unpack_from("=QQ", buf, 280)
    return SubvolInfo(treeid, name, generation, bool(flags & ROOT_SUBVOL_RDONLY),
                      bytes(buf[296:312]), bytes(buf[328:344]))


def is_readonly(fd: int) -> bool:
    """Whether fd (any file or directory) lives in a read-only subvolume."""
    return subvol_info(fd).readonly


def start_sync(fd: int) -> int:
    """Start a transaction commit; returns its transid.

    Every change made after this call lands in a later transaction, so a pass
    that remembers this transid and later searches for transid > it misses
    nothing that happened after the pass began.
    """
    buf = bytearray(8)
    fcntl.ioctl(fd, IOC_START_SYNC, buf, True)
    return int(struct.unpack("=Q", buf)[0])


def flush(fd: int) -> None:
    """Write back the filesystem's dirty data, then commit (BTRFS_IOC_SYNC)."""
    fcntl.ioctl(fd, IOC_SYNC)


def wait_sync(fd: int, transid: int = 0) -> None:
    """Wait for the commit of transid (0: the current one) to finish."""
    fcntl.ioctl(fd, IOC_WAIT_SYNC, struct.pack("=Q", transid))


def sync(fd: int) -> None:
    wait_sync(fd, start_sync(fd))


def search(fd: int, tree_id: int, lo: tuple[int, int, int], hi: tuple[int, int, int],
           min_transid: int = 0) -> Iterator[tuple[int, int, int, bytes]]:
    """Items (objectid, type, offset, data) with lo <= key <= hi in tree tree_id
    (0: fd's subvolume), from tree blocks written in transactions >= min_transid.

    Keys compare as (objectid, type, offset) tuples: the range is compound, so
    callers filter the item types they want.
    """
    buf = bytearray(112 + SEARCH_BUF)
    cur = lo
    while True:
        _KEY.pack_into(buf, 0, tree_id, cur[0], hi[0], cur[2], _U64_MAX, min_transid,
                       _U64_MAX, cur[1], hi[1], 4096, 0, 0, 0, 0, 0)
        struct.pack_into("=Q", buf, 104, SEARCH_BUF)
        fcntl.ioctl(fd, IOC_TREE_SEARCH_V2, buf, True)
        nr = _KEY.unpack_from(buf, 0)[9]
        if nr == 0:
            return
        pos = 112
        last = cur
        for _ in range(nr):
            _tr, obj, off, typ, length = _HDR.unpack_from(buf, pos)
            pos += _HDR.size
            if lo <= (obj, typ, off) <= hi:
                yield obj, typ, off, bytes(buf[pos:pos + length])
            pos += length
            last = (obj, typ, off)
        cur = _next_key(*last)
        if cur > hi or cur[0] > _U64_MAX:
            return


def _next_key(obj: int, typ: int, off: int) -> tuple[int, int, int]:
    if off < _U64_MAX:
        return obj, typ, off + 1
    if typ < 255:
        return obj, typ + 1, 0
    return obj + 1, 0, 0


def changed_inodes(fd: int, min_transid: int) -> Iterator[ChangedInode]:
    """Inodes of fd's subvolume whose inode item changed in a transaction >= min_transid.

    Uses the tree search min_transid filter, which skips every tree block not
    written since then: the cost follows the change, not the subvolume's size.
    The inode item's transid moves on any inode update (data writes, chmod,
    chown, xattrs, mtime-preserving writes), so metadata-only changes are
    found too. Delayed inode updates reach the tree at commit: sync first.
    """
    for obj, typ, _off, data in search(fd, 0, (FIRST_FREE_OBJECTID, 0, 0),
                                       (_U64_MAX, 255, _U64_MAX), min_transid):
        if typ == INODE_ITEM_KEY and len(data) >= 56:
            transid = struct.unpack_from("=Q", data, 8)[0]
            if transid >= min_transid:
                yield ChangedInode(obj, transid, struct.unpack_from("=I", data, 52)[0])


@dataclass(frozen=True)
class RootInfo:
    """A subvolume as the tree of tree roots describes it."""

    treeid: int
    generation: int
    readonly: bool
    parent: int = 0  # treeid of the subvolume holding it (0: top level)
    dirid: int = 0  # directory inode in the parent that holds it
    name: bytes = b""


ROOT_ITEM_KEY, ROOT_BACKREF_KEY = 132, 144
FS_TREE_OBJECTID, LAST_FREE_OBJECTID = 5, (1 << 64) - 256


def list_roots(fd: int) -> dict[int, RootInfo]:
    """Every subvolume of the filesystem: generation, read-only flag, parent and name."""
    items: dict[int, RootInfo] = {}
    back: dict[int, tuple[int, int, bytes]] = {}
    for obj, typ, off, data in search(fd, 1, (FS_TREE_OBJECTID, ROOT_ITEM_KEY, 0),
                                      (LAST_FREE_OBJECTID, ROOT_BACKREF_KEY, _U64_MAX)):
        if obj != FS_TREE_OBJECTID and obj < FIRST_FREE_OBJECTID:
            continue
        if typ == ROOT_ITEM_KEY and len(data) >= 216:
            gen = struct.unpack_from("=Q", data, 160)[0]
            flags = struct.unpack_from("=Q", data, 208)[0]
            items[obj] = RootInfo(obj, gen, bool(flags & ROOT_SUBVOL_RDONLY))
        elif typ == ROOT_BACKREF_KEY and len(data) >= 18:
            dirid, _seq, nlen = struct.unpack_from("=QQH", data, 0)
            back[obj] = (off, dirid, data[18:18 + nlen])
    out = {}
    for tid, r in items.items():
        p, d, n = back.get(tid, (0, 0, b""))
        out[tid] = RootInfo(tid, r.generation, r.readonly, p, d, n)
    return out


def ino_lookup(fd: int, treeid: int, objectid: int) -> bytes:
    """Path of directory objectid inside subvolume treeid ('' for its root, else 'a/b/')."""
    return _ino_lookup(fd, treeid, objectid)[1]


def subvol_paths(fd: int, roots: dict[int, RootInfo]) -> dict[int, bytes]:
    """treeid -> path from the top level (FS_TREE) of the filesystem, b'' for the top."""
    memo: dict[int, bytes] = {FS_TREE_OBJECTID: b""}

    def path(tid: int, depth: int = 0) -> bytes | None:
        if tid in memo:
            return memo[tid]
        r = roots.get(tid)
        if r is None or r.parent == 0 or depth > 256:
            return None
        base = path(r.parent, depth + 1)
        if base is None:
            return None
        inner = ino_lookup(fd, r.parent, r.dirid)
        memo[tid] = (base + b"/" if base else b"") + inner + r.name
        return memo[tid]

    return {tid: p for tid in roots if (p := path(tid)) is not None}


def inode_paths(fd: int, ino: int, size: int = 64 * 1024) -> list[bytes]:
    """Every path of inode ino, relative to the root of fd's subvolume."""
    while True:
        data = bytearray(size)
        addr = _buffer_address(data)
        args = bytearray(struct.pack("=QQ4QQ", ino, size, 0, 0, 0, 0, addr))
        fcntl.ioctl(fd, IOC_INO_PATHS, args, True)
        _left, missing, count, _missed = struct.unpack_from("=4I", data, 0)
        if missing and size < 16 * 1024 * 1024:
            size *= 4
            continue
        out = []
        for k in range(count):
            off = struct.unpack_from("=Q", data, 16 + 8 * k)[0]
            start = 16 + off
            out.append(bytes(data[start: data.index(b"\0", start)]))
        return out


def _buffer_address(buf: bytearray) -> int:
    import ctypes

    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def open_dir(path: bytes | str) -> int:
    """A directory fd for the ioctls, reached by handle (handles.py: no symlink followed)."""
    from dedupd import handles

    return handles.open_dir(os.path.abspath(os.fsencode(path)))
