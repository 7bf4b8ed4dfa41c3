"""Unlinked inodes let go of in another thread (fsops/release.py, issue 16): unlink_in
with a Releaser removes exactly what it removed without one, hands over the very
inode it unlinked, leaves no descriptor behind, and frees the blocks by close()."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd import handles
from dedupd.fsops import release
from dedupd.fsops.link import unlink_in
from dedupd.fsops.release import Releaser
from tests.fixtures.procs import open_files
from tests.integration.linktree import blob, write

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


class Kept(Releaser):
    """Keeps what it is handed instead of closing it: the test looks at it."""

    def __init__(self) -> None:
        super().__init__()
        self.fds: list[int] = []

    def release(self, fd: int) -> None:
        self.fds.append(fd)


def deleted_fds(under: Path) -> list[str]:
    """This process's descriptors of files under `under` with no name left."""
    return [t for t in open_files(f"{under}/") if t.endswith(" (deleted)")]


def unlink(path: Path, expect: os.stat_result, release: Releaser) -> bool:
    with handles.Parent(bytes(path)) as p:
        return unlink_in(p, expect.st_dev, expect.st_ino, release)


@pytest.fixture
def ext4(loopfs: Callable[..., Path]) -> Path:
    """A fresh ext4 (a filesystem of release.LOCAL, whatever /tmp is on)."""
    return loopfs("ext4", "128M")


def test_the_inode_handed_over_is_the_one_unlinked(ext4: Path) -> None:
    f = write(ext4 / "dup.bin", blob(1))
    st = f.stat()
    kept = Kept()
    assert unlink(f, st, kept)
    assert not f.exists() and len(kept.fds) == 1
    held = os.fstat(kept.fds[0])
    assert (held.st_dev, held.st_ino, held.st_nlink) == (st.st_dev, st.st_ino, 0)
    os.close(kept.fds[0])


@pytest.mark.parametrize("swap", ["symlink", "other file", "directory", "fifo", "gone"])
def test_a_name_that_is_not_the_inode_is_left_and_nothing_held(ext4: Path,
                                                               swap: str) -> None:
    # What the name holds when it is looked at decides, as without a Releaser: a
    # symlink to the inode, another file, a directory, a FIFO (held without opening
    # it: no wait for a writer) or nothing is never removed.
    target = write(ext4 / "target.bin", blob(2))
    st = target.stat()
    name = ext4 / "dup.bin"
    if swap == "symlink":
        name.symlink_to(target)
    elif swap == "other file":
        write(name, blob(2))
    elif swap == "directory":
        name.mkdir()
    elif swap == "fifo":
        os.mkfifo(name)
    fds_before = sorted(os.listdir("/proc/self/fd"))
    kept = Kept()
    assert not unlink(name, st, kept)
    assert kept.fds == []
    assert name.exists() or name.is_symlink() or swap == "gone"
    assert target.read_bytes() == blob(2)
    assert sorted(os.listdir("/proc/self/fd")) == fds_before  # nothing left open


def test_close_lets_every_inode_go_and_frees_the_blocks(ext4: Path) -> None:
    root = ext4
    files = [write(root / f"d{k}.bin", blob(k, 4 * MiB)) for k in range(8)]
    os.sync()
    free0 = os.statvfs(root).f_bfree * os.statvfs(root).f_frsize
    release = Releaser()
    for f in files:
        assert unlink(f, f.stat(), release)
    release.close()
    assert deleted_fds(root) == []
    assert not any(t.name == "release" for t in threading.enumerate())
    os.sync()
    freed = os.statvfs(root).f_bfree * os.statvfs(root).f_frsize - free0
    assert freed >= 0.95 * 8 * 4 * MiB


def test_elsewhere_the_name_is_unlinked_the_plain_way(ext4: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A filesystem not in LOCAL (NFS would rename a held file to .nfsXXXX instead of
    # letting it go): nothing is held, the name goes as without a Releaser.
    monkeypatch.setattr(release, "LOCAL", frozenset({"nfs"}))
    f = write(ext4 / "dup.bin", blob(4))
    kept = Kept()
    assert unlink(f, f.stat(), kept)
    assert not f.exists() and kept.fds == []
    assert deleted_fds(ext4) == []


def test_out_of_descriptors_the_name_is_unlinked_the_plain_way(tmp_path: Path) -> None:
    # No descriptor left to hold the inode with (EMFILE): the check and the unlink are
    # made as without a Releaser, and the file still goes.
    f = write(tmp_path / "dup.bin", blob(3))
    other = write(tmp_path / "other.bin", blob(3))
    code = f"""
import os, resource
from dedupd import handles
from dedupd.fsops.link import unlink_in
from dedupd.fsops.release import Releaser
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
st, ot = os.stat({bytes(f)!r}), os.stat({bytes(other)!r})
p, q = handles.Parent({bytes(f)!r}), handles.Parent({bytes(other)!r})
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
r = Releaser()
print(unlink_in(q, st.st_dev, st.st_ino, r), unlink_in(p, st.st_dev, st.st_ino, r))
r.close()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.split() == ["False", "True"]
    assert not f.exists() and other.read_bytes() == blob(3)
