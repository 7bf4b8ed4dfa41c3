"""An archive copied with `cp -al` (rsnapshot style) shares its lock file with the
original: `dedupd consolidate` into either gives its own archive a new lock file
(replaced through the archive root's fd, under the old file's lock) and runs; the
other name keeps the old file, never written. Before: the run stopped with "not a
regular file with one name ... (remove it, then run again)" at every rotation.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dedupd.fsops.archive_lock import LOCK_NAME, Locked, lock_archive, was_interrupted

pytestmark = pytest.mark.integration
LOCK = os.fsdecode(LOCK_NAME)


def _consolidate(tmp_path: Path, src: Path, arch: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / f"{arch.name}.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{src}"]\narchive = "{arch}"\n')
    return subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    """A source with one photo, an empty archive."""
    src, arch = tmp_path / "src", tmp_path / "arch"
    for d in (src, arch):
        d.mkdir()
    (src / "a.jpg").write_bytes(os.urandom(9000))
    return src, arch


def test_an_archive_copied_with_cp_al_is_consolidated_into(tmp_path: Path) -> None:
    (src, arch), copy = _trees(tmp_path), tmp_path / "arch.1"
    r = _consolidate(tmp_path, src, arch)
    assert r.returncode == 0, r.stderr
    subprocess.run(["cp", "-al", str(arch), str(copy)], check=True)
    old = os.lstat(arch / LOCK)
    assert old.st_nlink == 2
    before = (arch / LOCK).read_bytes()
    (src / "b.jpg").write_bytes(os.urandom(7000))
    r = _consolidate(tmp_path, src, copy)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    [placed] = copy.rglob("b.jpg")
    assert placed.read_bytes() == (src / "b.jpg").read_bytes()
    new = os.lstat(copy / LOCK)
    assert new.st_ino != old.st_ino and new.st_nlink == 1 and new.st_mode & 0o777 == 0o600
    assert os.lstat(arch / LOCK).st_ino == old.st_ino  # the original's name: its file,
    assert (arch / LOCK).read_bytes() == before  # as it was
    assert not list(arch.rglob("b.jpg"))
    assert sorted(n for n in os.listdir(copy) if n.startswith(".")) == [LOCK]  # no temp left


def test_a_link_planted_at_the_lock_name_is_never_written(tmp_path: Path) -> None:
    src, arch = _trees(tmp_path)
    (tmp_path / "target").write_bytes(b"not yours\n")
    target = tmp_path / "target"
    os.link(target, arch / LOCK)
    r = _consolidate(tmp_path, src, arch)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert target.read_bytes() == b"not yours\n" and os.lstat(target).st_nlink == 1
    assert os.lstat(arch / LOCK).st_nlink == 1


def test_a_shared_lock_held_elsewhere_is_not_replaced(tmp_path: Path) -> None:
    """The old file's lock is what makes the replacement safe: while another run holds
    it (a run into the original archive, or one replacing it now), this one stops as
    locked and the name stays."""
    arch, other = tmp_path / "arch", tmp_path / "other"
    arch.mkdir()
    other.mkdir()
    (other / LOCK).write_bytes(b"")
    os.link(other / LOCK, arch / LOCK)
    held = os.open(other / LOCK, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(Locked):
            lock_archive(os.fsencode(arch))
        assert os.lstat(arch / LOCK).st_nlink == 2
    finally:
        os.close(held)
    fd = lock_archive(os.fsencode(arch))
    try:
        assert os.fstat(fd).st_nlink == 1
        assert os.fstat(fd).st_ino == os.lstat(arch / LOCK).st_ino
        assert was_interrupted(os.fsencode(arch))  # the new file says RUNNING: a sweep
        with pytest.raises(Locked):  # a second run now finds the new file locked
            lock_archive(os.fsencode(arch))
    finally:
        os.close(fd)
    assert os.lstat(other / LOCK).st_nlink == 1 and (other / LOCK).read_bytes() == b""


_KILLED_REPLACING = """
import os, signal, sys
from dedupd import testpoints
from dedupd.fsops.archive_lock import lock_archive
kill = lambda point, path: os.kill(os.getpid(), signal.SIGKILL)
with testpoints.acting(("replace",), kill):
    lock_archive(os.fsencode(sys.argv[1]))
"""


def test_a_crash_while_replacing_a_shared_lock_leaves_no_partial(tmp_path: Path) -> None:
    """Killed between filling the new lock file and renaming it over the shared one:
    its `.partial` temp stays in the archive root. The next run sweeps it, and its
    inventory never takes it for archive content (it was indexed, then planned)."""
    (src, arch), copy = _trees(tmp_path), tmp_path / "arch.1"
    assert _consolidate(tmp_path, src, arch).returncode == 0
    subprocess.run(["cp", "-al", str(arch), str(copy)], check=True)
    r = subprocess.run([sys.executable, "-c", _KILLED_REPLACING, str(copy)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == -9, (r.returncode, r.stderr)
    [partial] = [n for n in os.listdir(copy) if n.endswith(".partial")]
    assert partial.startswith("." + LOCK + ".")
    assert os.lstat(copy / LOCK).st_nlink == 2  # not replaced yet
    (src / "b.jpg").write_bytes(os.urandom(7000))
    r = _consolidate(tmp_path, src, copy)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert sorted(n for n in os.listdir(copy) if n.startswith(".")) == [LOCK], r.stdout
    assert partial not in r.stdout + r.stderr
    assert os.lstat(copy / LOCK).st_nlink == 1
    [placed] = copy.rglob("b.jpg")
    assert placed.read_bytes() == (src / "b.jpg").read_bytes()
