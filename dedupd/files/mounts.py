"""The kernel's mount table (/proc/self/mountinfo): the one parser, and lookups.

A line, as proc_pid_mountinfo(5) describes it:

    36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)         (6)      (7)       (8) (9)   (10)      (11)

mount id, parent id, major:minor, root of the mount inside its filesystem,
mount point, per-mount options, optional fields ended by a lone "-", fstype,
source, per-superblock options. The kernel writes space, tab, newline and
backslash in paths as 3-digit octal escapes (`\\040`); they are undone here,
so mount points and roots are the exact bytes a path lookup uses.

Contracts worth knowing before using `dev`: it is the superblock's device
number. For most filesystems it equals `st_dev` of the files below the mount;
for BTRFS it does not (every subvolume, the top one included, has its own
anonymous st_dev), and a nested subvolume's st_dev appears nowhere here. The
mount that really holds an open fd is found by its mount id
(`mount_of_fd`), never by st_dev. A later line can be mounted over an earlier
one at the same point; path lookups return the last, as the kernel does.

Ground floor: imports nothing from dedupd.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from dedupd.tuples import NamedTuple  # typing's class syntax, built ~10x faster (tuples.py)

MOUNTINFO = "/proc/self/mountinfo"
ZFS_FSTYPES = ("zfs", "fuse.zfs")  # OpenZFS, and zfs-fuse (source = dataset in both)


class Mount(NamedTuple):
    """One line of mountinfo; bytes where the kernel gives path bytes."""

    mount_id: int
    parent_id: int
    dev: int  # os.makedev(major, minor) of the superblock (see the module docstring)
    root: bytes  # the directory of the filesystem mounted here ("/" unless a bind or subvol)
    mountpoint: bytes
    options: str  # per-mount options ("rw,relatime")
    fstype: str  # "ext4", "fuse.mergerfs", ...
    source: str  # device, dataset, "server:/export", or whatever the filesystem says
    super_options: str = ""

    @property
    def is_zfs(self) -> bool:
        return self.fstype in ZFS_FSTYPES

    @property
    def dataset(self) -> str:
        """The ZFS dataset mounted here (meaningful when is_zfs)."""
        return self.source


def unescape(raw: bytes) -> bytes:
    """A mountinfo field as bytes: `\\ooo` octal escapes decoded, nothing else touched."""
    if b"\\" not in raw:
        return raw
    out, i = bytearray(), 0
    while i < len(raw):
        code = raw[i + 1: i + 4]
        if raw[i] == 0x5C and len(code) == 3 and all(0x30 <= c <= 0x37 for c in code):
            out.append(int(code, 8) & 0xFF)
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def parse_line(line: bytes) -> Mount | None:
    """One mountinfo line; None when it does not have the documented shape."""
    fields = line.rstrip(b"\n").split(b" ")
    try:
        sep = fields.index(b"-", 6)  # optional fields (7) end with a lone "-"
        major, minor = fields[2].split(b":")
        return Mount(
            mount_id=int(fields[0]), parent_id=int(fields[1]),
            dev=os.makedev(int(major), int(minor)),
            root=unescape(fields[3]), mountpoint=unescape(fields[4]),
            options=fields[5].decode("ascii", "replace"),
            fstype=os.fsdecode(unescape(fields[sep + 1])),
            source=os.fsdecode(unescape(fields[sep + 2])),
            super_options=os.fsdecode(unescape(fields[sep + 3])) if len(fields) > sep + 3 else "",
        )
    except (ValueError, IndexError):
        return None


def parse(text: bytes) -> list[Mount]:
    """Every well-formed line, in table order (later lines are mounted over earlier ones)."""
    return [m for line in text.splitlines() if (m := parse_line(line)) is not None]


def read() -> list[Mount]:
    """The current mount table of this process's mount namespace."""
    with open(MOUNTINFO, "rb") as f:
        return parse(f.read())


def below(path: bytes, top: bytes) -> bool:
    """path is top or lies under it (lexically, on whole components)."""
    return path == top or path.startswith(top.rstrip(b"/") + b"/")


def mount_of_path(path: str | bytes | os.PathLike[str], mounts: Iterable[Mount] | None = None
                  ) -> Mount | None:
    """The mount a lookup of path reaches: the longest mount point above its real
    path, the last mounted when several share that point. None: no mount holds it
    (a path outside this namespace's root)."""
    real = os.path.realpath(os.fsencode(path))
    best: Mount | None = None
    for m in read() if mounts is None else mounts:
        if below(real, m.mountpoint) and (best is None
                                          or len(m.mountpoint) >= len(best.mountpoint)):
            best = m
    return best


def mount_id(fd: int) -> int:
    """The id of the mount an open fd was reached through (/proc/self/fdinfo, kernel
    >= 3.15). OSError when the fd is not open or the kernel does not say."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        for line in f:
            if line.startswith(b"mnt_id:"):
                return int(line[7:])
    raise OSError(f"/proc/self/fdinfo/{fd} has no mnt_id")


def mount_of_fd(fd: int, mounts: Iterable[Mount] | None = None) -> Mount | None:
    """The mount an open fd belongs to, by mount id (exact even for nested BTRFS
    subvolumes, stacked mounts and renamed paths). None when that mount is not in
    this namespace's table (unmounted lazily since, or another namespace's)."""
    mid = mount_id(fd)
    return next((m for m in (read() if mounts is None else mounts) if m.mount_id == mid), None)


def by_dev(dev: int, mounts: Iterable[Mount] | None = None) -> list[Mount]:
    """Mounts whose superblock device is dev, in table order (bind mounts give several)."""
    return [m for m in (read() if mounts is None else mounts) if m.dev == dev]


def mounts_below(root: bytes, mounts: Iterable[Mount] | None = None) -> list[Mount]:
    """Mounts strictly below root's real path (what a walk with cross_mounts enters)."""
    real = os.path.realpath(root)
    return [m for m in (read() if mounts is None else mounts)
            if m.mountpoint != real and below(m.mountpoint, real)]


def reached_at(target: bytes, root: bytes, cross_mounts: bool = False,
               mounts: list[Mount] | None = None) -> bytes | None:
    """The real path, root or below it, at which a walk of root (entering the mounts
    below root only with cross_mounts) reaches the directory target although target's
    real path is elsewhere: a bind mount of target (or of a directory above it) shows
    it there. Found from the mount table (target's path inside its filesystem, seen
    through each mount of that filesystem the walk enters) and kept only when it is
    target's very inode (st_dev and st_ino). None: the walk never meets target."""
    ms = read() if mounts is None else mounts
    rt, rr = os.path.realpath(target), os.path.realpath(root)
    mt, mr = mount_of_path(rt, ms), mount_of_path(rr, ms)
    try:
        want = os.stat(rt)
    except OSError:
        return None
    if mt is None or mr is None:
        return None
    inner = _under(mt.root, _rel(rt, mt.mountpoint))  # target's path in its filesystem
    for m in [mr, *(mounts_below(rr, ms) if cross_mounts else ())]:
        if m.dev != mt.dev or not below(inner, m.root):
            continue
        at = _under(m.mountpoint, _rel(inner, m.root))
        seen = mount_of_path(at, ms)
        if not below(at, rr) or seen is None or (
                not cross_mounts and seen.mount_id != mr.mount_id):
            continue
        try:
            st = os.stat(at)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            return at
    return None


def _rel(path: bytes, top: bytes) -> bytes:
    """path below top (below(path, top)), as b"" or b"/a/b"."""
    return path[len(top.rstrip(b"/")):]


def _under(top: bytes, rel: bytes) -> bytes:
    return top.rstrip(b"/") + rel or b"/"
