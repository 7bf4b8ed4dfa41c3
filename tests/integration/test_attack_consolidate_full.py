"""An archive that fills up during an import: the report lists as copied only the
copies that were placed, the run exits 1, and every name in the archive holds its
source's bytes.

Before: the report's `copies` (and the "copied SRC -> DEST" lines) listed every
planned copy, the ones that failed with ENOSPC included: 12 "copied" lines for 7
files in the archive, whose summary said "7 copied".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_copies_that_ran_out_of_space_are_not_reported_copied(
        tmp_path: Path, loopfs: Callable[[str, str], Path]) -> None:
    arch = loopfs("ext4", "8M") / "archive"
    arch.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(14):
        (src / f"f{i}.bin").write_bytes(os.urandom(700_000 + i))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{src}"]\narchive = "{arch}"\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg),
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr)
    rep = json.loads(r.stdout)
    placed = {p.name for p in arch.rglob("*.bin")}
    for p in arch.rglob("*.bin"):
        assert p.read_bytes() == (src / p.name).read_bytes()
    assert 0 < len(placed) < 14
    assert {os.path.basename(c["archive"]) for c in rep["copies"]} == placed
    assert rep["stats"]["files_copied"] == len(placed)
    assert sum(p["detail"].startswith("No space left") for p in rep["problems"]) == 14 - len(placed)
