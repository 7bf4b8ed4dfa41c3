"""Something other than a regular file at the archive's lock name (a FIFO, a symlink,
a directory: planted by a user who may write the archive root, or left by hand)
makes `dedupd consolidate` stop with a clear error naming it, exit 1, before
anything is imported; nothing is written through it and it stays as it was. (Another
name of a file elsewhere is replaced, never written: test_archive_lock_copied.py.)

Before: a FIFO was opened (O_RDWR does not block on Linux) and the RUNNING marker's
ftruncate printed `OSError: [Errno 22]` with a traceback; a symlink or a directory
printed the open's OSError with a traceback; a hardlink to a file elsewhere had that
file truncated and overwritten with the RUNNING marker.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
LOCK = ".dedupd-consolidate.lock"


def _plant(kind: str, at: Path, target: Path) -> None:
    if kind == "fifo":
        os.mkfifo(at)
    elif kind == "symlink":
        os.symlink(target, at)
    else:
        at.mkdir()


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_lock_name_that_is_not_a_file_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    src, arch = tmp_path / "src", tmp_path / "arch"
    src.mkdir()
    arch.mkdir()
    (src / "photo.jpg").write_bytes(os.urandom(9000))
    target = tmp_path / "target"
    target.write_bytes(b"not yours\n")
    _plant(kind, arch / LOCK, target)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{src}"]\narchive = "{arch}"\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert f"{arch / LOCK}: not a regular file" in r.stderr, r.stderr
    assert sorted(os.listdir(arch)) == [LOCK]  # nothing imported
    assert target.read_bytes() == b"not yours\n"
    mode = os.lstat(arch / LOCK).st_mode
    assert {"fifo": stat.S_ISFIFO, "symlink": stat.S_ISLNK, "directory": stat.S_ISDIR}[kind](mode)
