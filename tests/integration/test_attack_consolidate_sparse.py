"""A sparse file in a source share stays sparse in the archive.

A user of a share can make a file of any apparent size in no space at all
(`truncate -s 16T`); the consolidation, running as root with no quota, wrote its
holes out as zeros: a 64 MiB file holding 4 KiB of data failed with ENOSPC on a
32 MiB archive, and larger ones could fill the archive's disk for everyone. Runs
of zeros of a whole copy buffer are now left as holes (the copy is still verified
byte for byte: a hole reads as zeros).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.mark.parametrize("size", [8 * MiB, 64 * MiB], ids=["kept-in-memory", "streamed"])
def test_a_sparse_source_stays_sparse_in_the_archive(
        tmp_path: Path, loopfs: Callable[[str, str], Path], size: int) -> None:
    arch = loopfs("ext4", "32M") / "archive"
    arch.mkdir()
    src = tmp_path / "share"
    src.mkdir()
    data = os.urandom(4096)
    with open(src / "huge.img", "wb") as f:  # holes, 4 KiB of data, a hole at the end
        f.truncate(size)
        f.seek(5 * MiB + 123)
        f.write(data)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{src}"]\narchive = "{arch}"\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (copy,) = arch.rglob("huge.img")
    st = copy.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 <= 2 * MiB, st.st_blocks  # not 8 or 64 MiB of zeros
    with open(copy, "rb") as f:
        f.seek(5 * MiB + 123)
        assert f.read(4096) == data
