"""What `dedupd run --once` tells a new user: a first run over fresh files must
not read as "no duplicates", a dry run says what it would reclaim, and every
dedupe names the copy it was made against."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

EXE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dedupd"


def dedupd(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def pairs(root: Path, n: int = 3, size: int = 20000) -> None:
    root.mkdir(exist_ok=True)
    for i in range(n):
        data = os.urandom(size)
        (root / f"a{i}").write_bytes(data)
        (root / f"b{i}").write_bytes(data)


def test_fresh_files_are_reported_as_waiting_with_when(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    pairs(vol)
    newest = max(p.stat().st_mtime for p in vol.iterdir())
    db = f"sqlite:///{tmp_path}/i.db"
    text = dedupd("run", "--once", "--db", db, str(vol)).stdout
    assert "0 duplicate groups" in text
    first = time.strftime("%H:%M:%S", time.localtime(newest + 300))
    assert "6 files that may have duplicates changed less than settle_seconds (300 s) ago" \
        in text, text
    assert first in text, text  # when a pass will take them
    doc = json.loads(dedupd("run", "--once", "--json", "--db", db, str(vol)).stdout)
    pending = doc["volumes"][0]["pending"]
    assert pending["files"] == 6 and pending["settle_seconds"] == 300
    assert abs(pending["last_settles_at"] - (newest + 300)) < 1.0


def test_dry_run_says_what_it_would_reclaim_and_against_what(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    pairs(vol)
    db = f"sqlite:///{tmp_path}/i.db"
    text = dedupd("run", "--once", "--settle", "0", "--db", db, str(vol)).stdout
    assert "would reclaim up to 58.6 KiB" in text, text  # 3 copies of 20,000 bytes
    assert "0 B reclaimed" not in text
    for i in range(3):
        assert f"would hardlink: {vol}/b{i} becomes a link to {vol}/a{i}" in text, text
    doc = json.loads(dedupd("run", "--once", "--json", "--settle", "0", "--db", db,
                            str(vol)).stdout)
    assert doc["volumes"][0]["bytes_would_reclaim"] == 60000
    assert "wait to settle" not in text
    applied = dedupd("run", "--once", "--apply", "--settle", "0", "--db", db, str(vol)).stdout
    assert "58.6 KiB reclaimed" in applied and "would" not in applied


def test_extent_dedupe_names_its_reference(tmp_path: Path,
                                           loopfs: Callable[[str, str], Path]) -> None:
    mnt = loopfs("btrfs", "300M")
    pairs(mnt / "d", n=2, size=256 * 1024)
    db = f"sqlite:///{tmp_path}/i.db"
    text = dedupd("run", "--once", "--settle", "0", "--db", db, str(mnt)).stdout
    for i in range(2):
        assert f"did dedupe: {mnt}/d/b{i} against {mnt}/d/a{i}" in text, text
