"""Which filesystem holds a directory, named so that the name survives a remount.

`st_dev` is not a name: BTRFS subvolumes, ZFS datasets, FUSE, NFS and SMB get
an anonymous device number when they are mounted, in mount order, and a loop
device's number depends on which loop it landed on. The index keys files by
(filesystem identity, inode) instead, and maps this pass's st_dev values to
identities once per pass (`Identities`).

Rules, by the fstype of the mount that holds the directory (docs/schema.md
explains them for users):

- btrfs: `btrfs:<fs uuid>:<subvolume id>`. The UUID from BTRFS_IOC_FS_INFO,
  the subvolume (tree) id from BTRFS_IOC_INO_LOOKUP of the fd itself: a nested
  subvolume has its own st_dev and no line in mountinfo, so the fd decides.
- zfs / fuse.zfs (OpenZFS, zfs-fuse): `zfs:<dataset guid>`, the mount source
  is the dataset and `zfs get -Hp -o value guid` its GUID (survives renames,
  export/import, reboots; a destroyed and re-created dataset is a new one).
- ext2/3/4, xfs, f2fs and other block filesystems: `<fstype>:<uuid>` from the
  superblock (FS_IOC_GETFSUUID), else (a kernel without that ioctl) `blkid` on
  the source device. An all-zero or missing UUID falls through to the rule
  below (without asking blkid when the ioctl answered: it reads the same field).
- everything else (tmpfs, overlay, FUSE such as mergerfs, NFS, SMB, sshfs):
  `mount:<fstype>:<source>` with stable=False. A source that names a location
  (contains "/" or ":": a device, `server:/export`, `//server/share`) is kept
  as is, so moving the mount point keeps the name; a generic source (`tmpfs`,
  `none`, `overlay`) and every FUSE source (the daemon's free choice: mergerfs
  says `1:2` for any two branches named 1 and 2) add `:at:<mount point>` (and
  `:root:<root>` for a bind of a subdirectory), so two such mounts differ.
  Caveats: a remote filesystem reached by another server name, a device path
  that moved (sdb -> sdc) or a mount point that moved is a new filesystem to
  the index (its files are read again, never mixed up).

Inside each component `\\`, `:` and whitespace/control characters are written
as 3-digit octal escapes (as mountinfo does), so an identity never contains a
raw `:` inside a component and two different tuples never give one text.
"""

from __future__ import annotations

import os

from dedupd.errors import DedupdError
from dedupd.files import fsioctl, mounts
from dedupd.tuples import NamedTuple  # typing's class syntax, built ~10x faster (tuples.py)

# Filesystems whose superblock UUID is written at mkfs time and read back at
# every mount. tmpfs also answers FS_IOC_GETFSUUID, with a UUID made up at mount.
UUID_FSTYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "f2fs", "jfs", "reiserfs", "nilfs2",
                          "bcachefs", "vfat", "exfat", "ntfs", "ntfs3", "hfsplus", "udf"})
_NO_UUID = (b"", b"\0" * 16)
# The FAT family has no inode numbers on disk: the kernel (iunique) or the FUSE
# daemon makes one up when a file enters memory, so after a remount or an
# eviction another file can carry a number the index knows. It has no hard
# links either. Its files are trusted as unchanged only where the same name
# still has the same number (index/record.py); plain volumes refuse it (preflight).
FAT_FSTYPES = frozenset({"vfat", "msdos", "exfat", "fuse.fusefat", "fuse.exfat"})
MACHINE_ID = "/etc/machine-id"


class FsIdentityError(DedupdError):
    """The identity of a filesystem cannot be determined (or would be ambiguous)."""


class FsIdentity(NamedTuple):
    ident: str  # stable text, see the module docstring
    fstype: str
    mountpoint: bytes  # where it is mounted now (informational only)
    stable: bool  # False for the mount-source fallback

    def as_json(self) -> dict[str, object]:
        return {"ident": self.ident, "fstype": self.fstype,
                "mountpoint": os.fsdecode(self.mountpoint), "stable": self.stable}


def identify(dir_fd: int) -> FsIdentity:
    """The filesystem (for btrfs: the subvolume) that holds the open directory dir_fd.

    Reads only (fdinfo, mountinfo, ioctls; `zfs get` and `blkid` through proc.py).
    FsIdentityError when the mount or the identity the rules require cannot be read.
    """
    try:
        table = mounts.read()
        m = mounts.mount_of_fd(dir_fd, table)
    except OSError as e:
        raise FsIdentityError(f"{_where(dir_fd)}: cannot read the mount table: "
                              f"{e.strerror or e}") from None
    if m is None:
        # The table lists only the mounts under this process's root: a chroot into a
        # directory that is not itself a mount point hides the filesystem holding it.
        raise FsIdentityError(f"{_where(dir_fd)}: its mount is not in /proc/self/mountinfo "
                              "(unmounted meanwhile, or mounted outside this process's root: "
                              "a chroot into a directory that is not a mount point)")
    if m.fstype == "btrfs":
        return FsIdentity(_btrfs(dir_fd, m), m.fstype, m.mountpoint, True)
    if m.is_zfs:
        return FsIdentity(f"zfs:{zfs_guid(m.dataset)}", m.fstype, m.mountpoint, True)
    disk = _disk_uuid(dir_fd, m)
    if disk is not None:
        return FsIdentity(f"{_part(m.fstype)}:{disk}", m.fstype, m.mountpoint, True)
    return FsIdentity(fallback_ident(m, table), m.fstype, m.mountpoint, False)


def _btrfs(dir_fd: int, m: mounts.Mount) -> str:
    try:
        fsid = fsioctl.btrfs_fsid(dir_fd)
        subvol = fsioctl.btrfs_subvol_id(dir_fd)
    except OSError as e:
        raise FsIdentityError(f"{_where(dir_fd)}: BTRFS filesystem at "
                              f"{os.fsdecode(m.mountpoint)} does not tell its UUID and "
                              f"subvolume id: {e.strerror or e}") from None
    return f"btrfs:{uuid_text(fsid)}:{subvol}"


def uuid_text(raw: bytes) -> str:
    """16 bytes as str(uuid.UUID(bytes=raw)) spells them (8-4-4-4-12 lower-case hex),
    without importing uuid (and platform) at every start of dedupd."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def zfs_guid(dataset: str) -> str:
    """The GUID of a ZFS dataset (decimal text, as `zfs get -Hp` prints it)."""
    from dedupd import proc  # here: most passes identify no filesystem anew (5 ms)

    try:
        out = proc.run(["zfs", "get", "-Hp", "-o", "value", "guid", dataset], timeout=60).text
    except proc.ProcError as e:
        raise FsIdentityError(f"ZFS dataset {dataset}: cannot read its guid: {e}") from None
    guid = out.strip()
    if not guid.isdigit():
        raise FsIdentityError(f"ZFS dataset {dataset}: `zfs get guid` answered {guid!r}")
    return guid


def _disk_uuid(dir_fd: int, m: mounts.Mount) -> str | None:
    """The superblock UUID of a block filesystem, None when it has none we trust
    (other types' "UUIDs" can be dates or made up at mount: iso9660, tmpfs)."""
    if m.fstype not in UUID_FSTYPES:
        return None
    try:
        raw = fsioctl.fs_uuid(dir_fd)
    except OSError:
        raw = None
    if raw is not None:  # the superblock's own answer: blkid would read the same field
        return uuid_text(raw) if raw not in _NO_UUID and len(raw) == 16 else None
    return blkid_uuid(m.source) if m.source.startswith("/dev/") else None


def blkid_uuid(device: str) -> str | None:
    """`blkid -s UUID -o value DEVICE`, None when it has no UUID or blkid cannot tell."""
    from dedupd import proc

    try:
        r = proc.run(["blkid", "-s", "UUID", "-o", "value", device], timeout=30, check=False)
    except proc.ProcError:
        return None
    text = r.text.strip()
    if r.returncode != 0 or not text or set(text) <= set("0-"):
        return None
    return text.lower()


def fallback_ident(m: mounts.Mount, table: list[mounts.Mount]) -> str:
    """`mount:<fstype>:<source>`, plus the mount point (and root) of the canonical mount
    of that superblock when the source does not name a location (module docstring)."""
    head = f"mount:{_part(m.fstype)}:{_part(m.source)}"
    if ("/" in m.source or ":" in m.source) and not is_fuse(m.fstype):
        return head
    # Bind mounts of one tmpfs share its device: name it after the same mount
    # whichever bind this directory came through (the whole-filesystem one first).
    same = [x for x in mounts.by_dev(m.dev, table)
            if x.fstype == m.fstype and x.source == m.source] or [m]
    canon = min(same, key=lambda x: (x.root != b"/", len(x.mountpoint), x.mountpoint))
    ident = f"{head}:at:{_part(canon.mountpoint)}"
    return ident if canon.root == b"/" else f"{ident}:root:{_part(canon.root)}"


def is_fuse(fstype: str) -> bool:
    """A FUSE mount: its source is whatever name the daemon chose (mergerfs says "1:2"
    for branches /a/1 and /b/2), so it never names a location by itself."""
    return fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk"))


def _part(value: str | bytes) -> str:
    """One identity component: UTF-8 text with `\\`, `:`, whitespace, control
    characters and undecodable bytes as 3-digit octal escapes."""
    raw = value if isinstance(value, bytes) else os.fsencode(value)
    text = raw.decode("utf-8", "surrogateescape")
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, from surrogateescape
            out.append(f"\\{code - 0xDC00:03o}")
        elif ch in "\\:" or ch.isspace() or not ch.isprintable():
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def _where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


class Identities:
    """Per-pass cache st_dev -> FsIdentity.

    A pass maps each st_dev it meets once, from any open directory on it; a
    remount between passes gives new st_dev values and the same identities. Two
    devices with one stable identity (a cloned ext4 image mounted twice, both
    with the same UUID) raise FsIdentityError instead of mixing their inodes.
    """

    def __init__(self) -> None:
        self._by_dev: dict[int, FsIdentity] = {}
        self._dev_of: dict[str, int] = {}

    def of(self, dev: int, dir_fd: int) -> FsIdentity:
        """The identity of device dev; dir_fd: any open directory with st_dev == dev."""
        hit = self._by_dev.get(dev)
        if hit is not None:
            return hit
        if os.fstat(dir_fd).st_dev != dev:
            raise ValueError(f"{_where(dir_fd)} is not on device {os.major(dev)}:"
                             f"{os.minor(dev)}")
        found = identify(dir_fd)
        other = self._dev_of.get(found.ident)
        if other is not None and found.stable:
            first = self._by_dev[other]
            raise FsIdentityError(
                f"{os.fsdecode(first.mountpoint)} and {os.fsdecode(found.mountpoint)} are two "
                f"filesystems with one identity {found.ident} (a copied image keeps its UUID: "
                "give one a new UUID, e.g. tune2fs -U random or xfs_admin -U generate)")
        self._by_dev[dev] = found
        self._dev_of.setdefault(found.ident, dev)
        return found

    def known(self, dev: int) -> FsIdentity | None:
        """The identity already mapped for dev in this pass, else None."""
        return self._by_dev.get(dev)


class HostIdentity(NamedTuple):
    name: str  # [database] host, default: machine_id
    machine_id: str  # /etc/machine-id, fallback: hostname


def host_identity(configured: str | None) -> HostIdentity:
    """This host as a shared inventory knows it: the configured `[database] host`
    name, else the machine id; the machine id is /etc/machine-id (stripped), or the
    hostname where that file is missing or empty (containers, minimal systems)."""
    try:
        with open(MACHINE_ID, encoding="ascii", errors="replace") as f:
            machine = f.read().strip()
    except OSError:
        machine = ""
    machine = machine or os.uname().nodename  # what gethostname() answers on Linux
    return HostIdentity(name=configured or machine, machine_id=machine)
