"""The one mountinfo parser, on lines as the kernel writes them, and the identity
rules that need no mount (fallback naming, host identity)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from dedupd.files import fsid, mounts

# Shapes seen in the wild: optional fields (zero, one, several), octal escapes in
# mount point, root and source, a BTRFS subvolume mount, NFS and SMB sources.
MOUNTINFO = (
    b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n"
    b"46 27 0:41 /sv /mnt/b\\040tree rw,relatime shared:7 master:2 - btrfs /dev/loop1 "
    b"rw,subvolid=256,subvol=/sv\n"
    b"48 27 0:43 / /tmp/a\\012b\\134c rw - tmpfs tmpfs rw\n"
    b"49 27 0:43 /sub /srv/bound rw shared:3 - tmpfs tmpfs rw\n"
    b"50 27 0:44 / /tmp/other rw - tmpfs tmpfs rw\n"
    b"51 27 0:50 / /net/photos rw,relatime - nfs4 nas:/export/photos rw,vers=4.2\n"
    b"52 27 0:51 / /net/smb rw - cifs //nas/share\\040one rw\n"
    b"53 27 0:52 / /pool rw - fuse.mergerfs /b1:/b2 rw,user_id=0\n"
    b"54 27 0:53 / /z rw - fuse.zfs tank/ds rw\n"
    b"55 27 0:44 / /tmp/other rw - tmpfs tmpfs rw\n"
)


def test_fields_escapes_and_optional_fields() -> None:
    table = mounts.parse(MOUNTINFO)
    assert [m.mount_id for m in table] == [27, 46, 48, 49, 50, 51, 52, 53, 54, 55]
    b = table[1]
    assert (b.parent_id, b.dev, b.root, b.mountpoint) == (27, os.makedev(0, 41), b"/sv",
                                                          b"/mnt/b tree")
    assert (b.fstype, b.source, b.options) == ("btrfs", "/dev/loop1", "rw,relatime")
    assert b.super_options == "rw,subvolid=256,subvol=/sv"
    assert table[2].mountpoint == b"/tmp/a\nb\\c"
    assert table[0].dev == os.makedev(254, 0)
    assert table[6].source == "//nas/share one"
    assert table[8].is_zfs and table[8].dataset == "tank/ds"
    assert not table[0].is_zfs


@pytest.mark.parametrize("line", [
    b"",
    b"garbage",
    b"27 1 254:0 / / rw,relatime ext4 /dev/vda rw",  # no "-" separator
    b"x 1 254:0 / / rw - ext4 /dev/vda rw",  # mount id not a number
    b"27 1 254 / / rw - ext4 /dev/vda rw",  # no major:minor
    b"27 1 254:0 / / rw -",  # nothing after the separator
])
def test_malformed_lines_are_skipped(line: bytes) -> None:
    assert mounts.parse(line + b"\n" + MOUNTINFO)[0].mount_id == 27


def test_unescape_only_octal_escapes() -> None:
    assert mounts.unescape(b"/a\\040b\\011c\\012d\\134e") == b"/a b\tc\nd\\e"
    assert mounts.unescape(b"/not\\9escape\\04") == b"/not\\9escape\\04"
    assert mounts.unescape(b"/plain") == b"/plain"


def test_path_lookups_take_the_topmost_longest_mount() -> None:
    table = mounts.parse(MOUNTINFO)
    found = mounts.mount_of_path("/tmp/other/x", table)
    assert found is not None and found.mount_id == 55  # stacked: the last one wins
    found = mounts.mount_of_path("/mnt/b tree/2020/a.jpg", table)
    assert found is not None and found.root == b"/sv"
    found = mounts.mount_of_path("/mnt/b", table)
    assert found is not None and found.mountpoint == b"/"
    assert [m.mount_id for m in mounts.by_dev(os.makedev(0, 43), table)] == [48, 49]
    assert [m.mount_id for m in mounts.mounts_below(b"/net", table)] == [51, 52]


def test_real_table_and_fd_lookup() -> None:
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        m = mounts.mount_of_fd(fd)
    finally:
        os.close(fd)
    assert m is not None and m.mountpoint == b"/proc" and m.fstype == "proc"
    with pytest.raises(OSError):
        mounts.mount_id(987654)


def test_fallback_names() -> None:
    table = mounts.parse(MOUNTINFO)
    by_id = {m.mount_id: m for m in table}

    def ident(mid: int) -> str:
        return fsid.fallback_ident(by_id[mid], table)

    # a location source names the filesystem wherever it is mounted
    assert ident(51) == "mount:nfs4:nas\\072/export/photos"
    assert ident(52) == "mount:cifs://nas/share\\040one"
    # a FUSE source is the daemon's choice (mergerfs: "1:2" for any branches 1 and 2)
    assert ident(53) == "mount:fuse.mergerfs:/b1\\072/b2:at:/pool"
    # a generic source adds the mount point of the whole-filesystem mount: two tmpfs
    # differ, a bind of a subdirectory names the tmpfs it shows
    assert ident(48) == "mount:tmpfs:tmpfs:at:/tmp/a\\012b\\134c"
    assert ident(49) == ident(48)
    assert ident(50) == "mount:tmpfs:tmpfs:at:/tmp/other"
    only_bind = [by_id[49]]
    assert fsid.fallback_ident(by_id[49], only_bind) == \
        "mount:tmpfs:tmpfs:at:/srv/bound:root:/sub"


def test_identity_components_never_hold_a_raw_separator() -> None:
    # a source "a" at "/x:at:/y" and a source "a:at:/x" must not give one text
    weird = mounts.parse(b"60 1 0:60 / /x:at:/y rw - tmpfs a rw\n"
                         b"61 1 0:61 / /m rw - fuse.s a:at:/x rw\n")
    idents = {fsid.fallback_ident(m, weird) for m in weird}
    assert len(idents) == 2
    assert fsid.fallback_ident(weird[0], weird) == "mount:tmpfs:a:at:/x\\072at\\072/y"
    bad = mounts.parse(b"62 1 0:62 / /n\\303 rw - tmpfs t\\007 rw\n")[0]
    assert fsid.fallback_ident(bad, [bad]) == "mount:tmpfs:t\\007:at:/n\\303"


def test_host_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    machine = Path("/etc/machine-id").read_text().strip()
    assert fsid.host_identity(None) == fsid.HostIdentity(machine, machine)
    assert fsid.host_identity("nas1") == fsid.HostIdentity("nas1", machine)
    # no machine id (containers, minimal systems): the hostname stands in
    monkeypatch.setattr(fsid, "MACHINE_ID", str(tmp_path / "missing"))
    assert fsid.host_identity(None) == fsid.HostIdentity(socket.gethostname(),
                                                         socket.gethostname())
    empty = tmp_path / "machine-id"
    empty.write_text("\n")
    monkeypatch.setattr(fsid, "MACHINE_ID", str(empty))
    assert fsid.host_identity("x").machine_id == socket.gethostname()


def test_uuid_text_spells_uuids_as_the_uuid_module_does() -> None:
    """Filesystem identities already stored spell UUIDs with str(uuid.UUID(...)):
    the spelling must not change."""
    import uuid

    for raw in (bytes(16), b"\xff" * 16, bytes(range(16)), os.urandom(16)):
        assert fsid.uuid_text(raw) == str(uuid.UUID(bytes=raw))
