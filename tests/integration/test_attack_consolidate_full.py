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


def test_archive_full_with_two_batches_in_the_worker(
        tmp_path: Path, loopfs: Callable[[str, str], Path]) -> None:
    """Batches of two (the test hook): the archive fills up while one batch is being
    synced, verified and linked and the next staged (copyloop.py). Every name holds
    its source's bytes, every index row names such a file, no temp file stays; with
    the space back, the next run imports the rest and its index is whole."""
    from dedupd.consolidate.execute import BATCH_ENV
    from dedupd.index import provenance as prov
    from dedupd.index.store import Store

    fs = loopfs("ext4", "16M")
    filler = fs / "filler"
    arch = fs / "archive"
    arch.mkdir()
    src = tmp_path / "src"
    src.mkdir()
    for i in range(14):
        (src / f"f{i}.bin").write_bytes(os.urandom(700_000 + i))
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    filler.write_bytes(b"\0" * (free - 5_000_000))  # room for about 7 of the 14
    os.sync()
    db = tmp_path / "db"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{db}"\n'
                   f'[consolidate.v]\nsources = ["{src}"]\narchive = "{arch}"\n')
    env = {**os.environ, BATCH_ENV: "2"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c",
                               str(cfg), "--json"], capture_output=True, text=True,
                              timeout=120, env=env)

    def consistent() -> int:
        names = list(arch.rglob("*.bin"))
        for p in names:
            assert p.read_bytes() == (src / p.name).read_bytes()
        assert not [p for p in arch.rglob("*") if p.name.startswith(".dedupd-copy.")]
        store = Store(f"sqlite:///{db}")
        try:
            rows = prov.load(store, "v")
        finally:
            store.close()
        for path, row in rows.items():
            assert Path(os.fsdecode(row.archive_path)).read_bytes() == Path(
                os.fsdecode(path)).read_bytes()
        return len(names)

    r = run()
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    placed = consistent()
    assert 0 < placed < 14
    filler.unlink()
    again = run()
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["stats"]["problems"] == 0
    assert consistent() == 14
    store = Store(f"sqlite:///{db}")
    try:
        assert prov.count(store, "v") == 14
    finally:
        store.close()
