"""Filesystem identity on real mounts: the name survives remounts that move st_dev.

Each test remounts as a reboot would reorder mounts: something else takes the
device number the filesystem had, and the identity must not care.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dedupd import handles
from dedupd.files import fsid, mounts
from tests.fixtures.components import require_tools
from tests.fixtures.zfs import Pool


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          text=True, timeout=120).stdout.strip()


class Mounter:
    """Mounts, loop devices and tmpfs fillers made by one test, undone in reverse."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted: list[Path] = []
        self.loops: list[str] = []

    def mount(self, target: Path, *args: str | Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        sh("mount", *args, target)
        self.mounted.append(target)
        return target

    def umount(self, target: Path) -> None:
        sh("umount", target)
        self.mounted.remove(target)

    def tmpfs(self, name: str) -> Path:
        """A tmpfs: holds an anonymous device number while it stays mounted."""
        return self.mount(self.base / name, "-t", "tmpfs", "tmpfs")

    def fill(self, n: int, holding: int) -> list[Path]:
        """At least n tmpfs fillers, and more until one holds device number `holding`
        (the kernel hands out the lowest free number: other tests may have left
        lower ones free, which the first fillers then take instead)."""
        out: list[Path] = []
        while len(out) < n or (len(out) < 64
                               and holding not in {os.stat(f).st_dev for f in out}):
            out.append(self.tmpfs(f"filler{len(out)}"))
        return out

    def loop(self, image: Path) -> str:
        dev = sh("losetup", "-f", "--show", image)
        self.loops.append(dev)
        return dev

    def detach(self, dev: str) -> None:
        sh("losetup", "-d", dev)
        self.loops.remove(dev)

    def close(self) -> None:
        for m in reversed(self.mounted):
            if subprocess.run(["umount", str(m)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(m)], capture_output=True)
        for dev in self.loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    require_tools("mount", "losetup", "blkid")
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        m.close()


@contextlib.contextmanager
def opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def ident_of(path: Path) -> tuple[fsid.FsIdentity, int]:
    with opened(path) as fd:
        return fsid.identify(fd), os.fstat(fd).st_dev


def make_image(tmp: Path, kind: str, name: str) -> Path:
    mkfs = {"btrfs": ["mkfs.btrfs", "-q", "-f"], "ext4": ["mkfs.ext4", "-q", "-F"],
            "xfs": ["mkfs.xfs", "-q", "-f"]}[kind]
    require_tools(mkfs[0])
    img = tmp / name
    sh("truncate", "-s", "300M" if kind == "xfs" else "128M", img)
    sh(*mkfs, img)
    return img


def test_btrfs_subvolume_keeps_its_identity_after_device_numbers_move(
        tmp_path: Path, mounter: Mounter) -> None:
    img = make_image(tmp_path, "btrfs", "b.img")
    top = mounter.mount(tmp_path / "top", "-o", "loop", img)
    sh("btrfs", "subvolume", "create", top / "photos")
    sh("btrfs", "subvolume", "create", top / "photos" / "inner")
    sh("btrfs", "subvolume", "create", top / "other")
    uuid = sh("blkid", "-s", "UUID", "-o", "value", img)
    rootid = {n: sh("btrfs", "inspect-internal", "rootid", top / n)
              for n in ("photos", "photos/inner", "other")}
    whole, _ = ident_of(top)
    assert whole.ident == f"btrfs:{uuid}:5" and whole.stable and whole.fstype == "btrfs"
    mnt = tmp_path / "photos"
    mounter.mount(mnt, "-o", "loop,subvol=photos", img)
    before, dev_before = ident_of(mnt)
    # a nested subvolume has its own st_dev and no line in mountinfo
    inner, inner_dev = ident_of(mnt / "inner")
    assert before.ident == f"btrfs:{uuid}:{rootid['photos']}"
    assert inner.ident == f"btrfs:{uuid}:{rootid['photos/inner']}"
    assert inner_dev != dev_before
    assert all(m.dev != inner_dev for m in mounts.read())
    assert inner.mountpoint == before.mountpoint == os.fsencode(mnt)
    assert ident_of(top / "other")[0].ident == f"btrfs:{uuid}:{rootid['other']}"
    # a snapshot holds the same inode numbers, and is another subvolume
    sh("btrfs", "subvolume", "snapshot", "-r", top / "photos", top / "snap")
    snap = ident_of(top / "snap")[0].ident
    assert snap == f"btrfs:{uuid}:{sh('btrfs', 'inspect-internal', 'rootid', top / 'snap')}"
    assert snap != before.ident

    mounter.umount(mnt)
    mounter.umount(top)
    fillers = mounter.fill(3, holding=dev_before)  # take the freed numbers
    mounter.mount(mnt, "-o", "loop,subvol=photos", img)
    after, dev_after = ident_of(mnt)
    assert dev_after != dev_before, "the remount must really move st_dev"
    assert after == before
    assert ident_of(mnt / "inner")[0] == inner
    assert len({ident_of(f)[0].ident for f in fillers}) == len(fillers)


def test_zfs_dataset_keeps_its_identity_after_remount(
        zpool: Callable[..., Pool], mounter: Mounter) -> None:
    pool = zpool()
    ds = pool.dataset("photos")
    sh("zfs", "create", ds)
    sh("zfs", "create", pool.dataset("other"))
    path = pool.mountpoint / "photos"
    guid = sh("zfs", "get", "-Hp", "-o", "value", "guid", ds)
    before, dev_before = ident_of(path)
    assert before == fsid.FsIdentity(f"zfs:{guid}", "fuse.zfs", os.fsencode(path), True)
    assert ident_of(pool.mountpoint / "other")[0].ident != before.ident
    assert ident_of(pool.mountpoint)[0].ident != before.ident

    sh("zfs", "umount", ds)
    mounter.fill(2, holding=dev_before)
    sh("zfs", "mount", ds)
    after, dev_after = ident_of(path)
    assert dev_after != dev_before, "the remount must really move st_dev"
    assert after == before


def test_zfs_identity_error_is_one_clear_line(zfs_daemon: None) -> None:
    with pytest.raises(fsid.FsIdentityError, match="nosuchpool/ds: cannot read its guid"):
        fsid.zfs_guid("nosuchpool/ds")


@pytest.mark.parametrize("kind", ["ext4", "xfs"])
def test_block_filesystem_on_another_loop_device_is_the_same(
        tmp_path: Path, mounter: Mounter, kind: str) -> None:
    img = make_image(tmp_path, kind, f"{kind}.img")
    uuid = sh("blkid", "-s", "UUID", "-o", "value", img)
    mnt = tmp_path / "m"
    loop_a = mounter.loop(img)
    mounter.mount(mnt, loop_a)
    before, dev_before = ident_of(mnt)
    assert before == fsid.FsIdentity(f"{kind}:{uuid}", kind, os.fsencode(mnt), True)
    mounter.umount(mnt)
    mounter.detach(loop_a)
    filler = make_image(tmp_path, "ext4", "filler.img")
    mounter.loop(filler)  # takes the first free loop device, loop A most likely
    loop_b = mounter.loop(img)
    for _ in range(8):  # other tests free loop devices too: hold A until we are elsewhere
        if loop_b != loop_a:
            break
        loop_b = mounter.loop(img)
    mounter.mount(mnt, loop_b)
    after, dev_after = ident_of(mnt)
    assert dev_after != dev_before and after == before


def test_tmpfs_mounts_differ_binds_agree_and_names_keep_their_bytes(
        tmp_path: Path, mounter: Mounter) -> None:
    odd = tmp_path / "with space\nand newline"
    a = mounter.mount(odd, "-t", "tmpfs", "tmpfs")
    b = mounter.tmpfs("b")
    (a / "sub").mkdir()
    bound = mounter.mount(tmp_path / "bound", "--bind", a / "sub")
    ia, ib, ibound = ident_of(a)[0], ident_of(b)[0], ident_of(bound)[0]
    assert ia.ident != ib.ident
    assert not ia.stable and not ib.stable and ia.fstype == "tmpfs"
    assert ia.mountpoint == os.fsencode(odd)
    assert "\\040" in ia.ident and "\\012" in ia.ident and "\n" not in ia.ident
    assert ibound.ident == ia.ident and ibound.mountpoint == os.fsencode(bound)
    with opened(odd) as fd:
        m = mounts.mount_of_fd(fd)
    assert m is not None and m.mountpoint == os.fsencode(odd)


def test_identities_cache_and_refuse_a_cloned_uuid(tmp_path: Path, mounter: Mounter) -> None:
    img = make_image(tmp_path, "ext4", "a.img")
    clone = tmp_path / "clone.img"
    sh("cp", "--reflink=never", img, clone)
    first = mounter.mount(tmp_path / "first", "-o", "loop", img)
    second = mounter.mount(tmp_path / "second", "-o", "loop", clone)
    ids = fsid.Identities()
    with opened(first) as f1, opened(second) as f2, opened(tmp_path) as other:
        d1, d2 = os.fstat(f1).st_dev, os.fstat(f2).st_dev
        assert ids.known(d1) is None
        got = ids.of(d1, f1)
        assert ids.known(d1) is got and ids.of(d1, other) is got  # cached per device
        with pytest.raises(ValueError):
            ids.of(os.fstat(other).st_dev + 12345, other)
        with pytest.raises(fsid.FsIdentityError, match="two filesystems with one identity"):
            ids.of(d2, f2)
        assert ids.known(d2) is None


def test_handle_fallback_refuses_mounts_but_enters_subvolumes(
        tmp_path: Path, mounter: Mounter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without openat2 a mount is told from a BTRFS subvolume (both change st_dev) by
    the fd's own mount, not by a path lookup of every mount point."""
    monkeypatch.setattr(handles, "FORCE_FALLBACK", True)
    img = make_image(tmp_path, "btrfs", "b.img")
    top = mounter.mount(tmp_path / "top", "-o", "loop", img)
    sh("btrfs", "subvolume", "create", top / "sv")
    mounter.mount(top / "t m p", "-t", "tmpfs", "tmpfs")
    with opened(top) as fd:
        os.close(handles.open_child_dir(fd, b"sv"))
        with pytest.raises(handles.PathChanged) as ei:
            handles.open_child_dir(fd, b"t m p")
        assert ei.value.errno == errno.EXDEV
        os.close(handles.open_child_dir(fd, b"t m p", cross_mounts=True))


def test_a_directory_whose_mount_is_gone_has_no_identity(tmp_path: Path,
                                                           mounter: Mounter) -> None:
    """Lazily unmounted under an open fd: the mount is in no table, so there is
    nothing to name it by; one clear line, no guess."""
    t = mounter.tmpfs("gone")
    with opened(t) as fd:
        sh("umount", "-l", t)
        mounter.mounted.remove(t)
        with pytest.raises(fsid.FsIdentityError, match="not in /proc/self/mountinfo"):
            fsid.identify(fd)
        with pytest.raises(fsid.FsIdentityError):
            fsid.Identities().of(os.fstat(fd).st_dev, fd)


def test_two_mergerfs_pools_with_like_named_branches_differ(tmp_path: Path,
                                                            mounter: Mounter) -> None:
    """mergerfs names a pool after its branches' last components ("1:2"): that source
    is no location, so the mount point tells two pools apart."""
    require_tools("mergerfs")
    pools = []
    for side in ("a", "b"):
        for n in ("1", "2"):
            (tmp_path / side / n).mkdir(parents=True)
        pool = tmp_path / f"pool-{side}"
        pool.mkdir()
        branches = f"{tmp_path / side / '1'}:{tmp_path / side / '2'}"
        sh("mergerfs", "-o", "cache.files=off", branches, pool)
        mounter.mounted.append(pool)
        pools.append(pool)
    a, b = (ident_of(p)[0] for p in pools)
    assert a.fstype == "fuse.mergerfs" and not a.stable
    assert a.ident != b.ident
    sources = {m.source for m in mounts.read() if m.mountpoint in map(os.fsencode, pools)}
    assert len(sources) == 1, "the premise: both pools have one source"
    assert a.ident.endswith(f":at:{pools[0]}") and b.ident.endswith(f":at:{pools[1]}")


def test_ext4_without_a_uuid_falls_back_and_says_so(tmp_path: Path, mounter: Mounter) -> None:
    """An all-zero UUID (mkfs -U clear, some cloud images) names nothing: the mount
    source stands in, stable=False, and blkid agrees there is no UUID."""
    require_tools("mkfs.ext4")
    img = tmp_path / "nouuid.img"
    sh("truncate", "-s", "64M", img)
    sh("mkfs.ext4", "-q", "-F", "-U", "clear", img)
    loop = mounter.loop(img)
    mnt = mounter.mount(tmp_path / "m", loop)
    got = ident_of(mnt)[0]
    assert got == fsid.FsIdentity(f"mount:ext4:{loop}", "ext4", os.fsencode(mnt), False)
    assert fsid.blkid_uuid(loop) is None
    with_uuid = make_image(tmp_path, "ext4", "u.img")
    assert fsid.blkid_uuid(mounter.loop(with_uuid)) == sh("blkid", "-s", "UUID", "-o",
                                                          "value", with_uuid)
