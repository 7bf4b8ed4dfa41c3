"""A source file that is a hardlink of an archive file (`cp -al` backups, an earlier
hardlink pass over share and archive), of a size no other file has: the content
is in the archive already; the run records where it is and imports the rest.

Before: nothing ever hashed that inode (a size met once is never read), so the
content in the archive had no hash and Executor._confirm stopped the whole run
on `assert k.content.full is not None` (a traceback, "this is a bug"), every
run, before any copy: the share's other new files were never imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _consolidate(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "-c",
                           str(tmp / "c.toml"), "--db", f"sqlite:///{tmp / 'db'}", "p", *args],
                          capture_output=True, text=True, timeout=120)


def test_a_source_hardlinked_into_the_archive_is_confirmed_and_the_rest_imported(
        tmp_path: Path) -> None:
    src, arch = tmp_path / "s", tmp_path / "arch"
    src.mkdir()
    (arch / "2020").mkdir(parents=True)
    linked = os.urandom(7777)
    (src / "a.bin").write_bytes(linked)
    os.link(src / "a.bin", arch / "2020" / "a.bin")
    new = os.urandom(7778)
    (src / "b.bin").write_bytes(new)
    (tmp_path / "c.toml").write_text(
        f'[consolidate.p]\nsources = ["{src}"]\narchive = "{arch}"\nlayout = "{{name}}"\n')
    r = _consolidate(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert (arch / "b.bin").read_bytes() == new
    assert (arch / "2020" / "a.bin").read_bytes() == linked
    where = subprocess.run([sys.executable, "-m", "dedupd", "where", "--db",
                            f"sqlite:///{tmp_path / 'db'}", str(src / "a.bin")],
                           capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert str(arch / "2020" / "a.bin") in where.stdout
    again = _consolidate(tmp_path)  # nothing left to do, nothing read again
    assert again.returncode == 0, again.stderr
    assert "0 copied" in again.stdout and "0 B read" in again.stdout, again.stdout
