"""The run after a first import reads nothing when nothing changed, with the sources
on another filesystem than the archive (the usual case: shares on other disks).

Before: the sources' hashes learnt by the copies went to the index writer
(consolidate/writer.py), whose own Store had never met the sources' device (it
records only archive files), so Store.save_hashes dropped them; the next run read
every source again to hash it (run 2: all bytes read, run 3: none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _consolidate(tmp: Path) -> dict[str, int]:
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "-c",
                        str(tmp / "c.toml"), "--db", f"sqlite:///{tmp / 'db'}", "p", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    stats: dict[str, int] = json.loads(r.stdout)["stats"]
    return stats


def test_a_re_run_reads_nothing_with_the_sources_on_another_filesystem(
        tmp_path: Path) -> None:
    src, arch = tmp_path / "src", tmp_path / "arch"
    src.mkdir()
    arch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "dedupd-test-src", str(src)],
                   check=True)
    try:
        assert os.stat(src).st_dev != os.stat(arch).st_dev
        for i in range(5):  # lone sizes, and a pair of one content
            (src / f"f{i}").write_bytes(os.urandom(10_000 + i))
        (src / "g1").write_bytes(b"g" * 20_000)
        (src / "g2").write_bytes(b"g" * 20_000)
        (tmp_path / "c.toml").write_text(
            f'[consolidate.p]\nsources = ["{src}"]\narchive = "{arch}"\n')
        first = _consolidate(tmp_path)
        assert first["files_copied"] == 6
        again = _consolidate(tmp_path)
        assert again["already_in_archive"] == 6 and again["files_copied"] == 0
        assert again["bytes_read"] == 0, again
    finally:
        subprocess.run(["umount", str(src)], check=False)
