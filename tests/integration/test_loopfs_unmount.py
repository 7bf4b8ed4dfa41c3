"""The fixtures' unmount (tests/fixtures/loopfs.py) finds mounts by mountinfo:
os.path.ismount missed a bind mount of a directory of the same filesystem, which
stayed mounted after the test (and a teardown's `rm -rf` went through it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.components import require_tools
from tests.fixtures.loopfs import mounts_under, unmount

pytestmark = pytest.mark.integration


def test_a_bind_mount_of_the_same_filesystem_is_unmounted(tmp_path: Path) -> None:
    require_tools("mount", "umount")
    src, dst = tmp_path / "src", tmp_path / "with space\nand line"
    for d in (src, dst, src / "inner"):
        d.mkdir()
    (src / "keep").write_bytes(b"kept")
    try:
        for _ in range(2):  # stacked
            subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        subprocess.run(["mount", "--bind", str(src / "inner"), str(dst / "inner")],
                       check=True)
        assert (dst / "keep").stat().st_dev == src.stat().st_dev  # same filesystem
        assert len(mounts_under(dst)) == 3
        unmount(dst)
        assert mounts_under(dst) == []
        assert list(dst.iterdir()) == [] and (src / "keep").read_bytes() == b"kept"
    finally:
        for p in mounts_under(dst):
            subprocess.run(["umount", "-l", p], check=False)
