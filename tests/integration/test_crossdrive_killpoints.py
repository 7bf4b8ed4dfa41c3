"""Fault injection for the cross-drive linker: kill -9 after every step, recover.

The pool view (the mergerfs mount) must show every path with its original
bytes after recovery, for every kill point; a rerun then finishes the job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.mergerfs import MergerPool
from tests.integration import saving_run
from tests.integration.linktree import (
    blob,
    config,
    content,
    dedupd,
    dedupd_here,
    lose_journal_states,
    manifest,
    unfinished_ops,
    write,
)

pytestmark = pytest.mark.integration

# PENDING mkdirs link LINKED REMOVING hold unlink DONE (8) for the move into a new
# directory, PENDING LINKED REMOVING hold unlink DONE (6) where the name exists (hold:
# the duplicate's name moved to the hold name its row names, then checked).
STEPS = 14


def setup(pool: MergerPool, tmp: Path) -> Path:
    b0, b1 = pool.branches
    write(b0 / "a/x.bin", blob(1, 200_000))
    write(b1 / "deep/new dir/x.bin", blob(1, 200_000))
    (b1 / "deep").chmod(0o750)
    write(b0 / "same/z.bin", blob(2, 100_000))
    write(b1 / "same/z.bin", blob(2, 100_000))
    return config(tmp, {"p": {"kind": "pool", "path": str(pool.root),
                              "pool_root": str(pool.root),
                              "branches": [str(b) for b in pool.branches],
                              "settle_seconds": 0, "min_size": 1, "mode": "apply"}})


def test_step_count(mergerfs_pool: Callable[..., MergerPool], tmp_path: Path) -> None:
    pool = mergerfs_pool(2)
    cfg = setup(pool, tmp_path)
    log = tmp_path / "steps.log"
    dedupd("run", "--once", "-c", str(cfg), env={"DEDUPD_TEST_STEP_LOG": str(log)})
    assert len(log.read_text().splitlines()) == STEPS, log.read_text()


@pytest.mark.parametrize("lost", [False, True], ids=["journal-intact", "states-lost"])
@pytest.mark.parametrize("k", range(1, STEPS + 1))
def test_kill_at_step_then_recover(mergerfs_pool: Callable[..., MergerPool], tmp_path: Path,
                                   k: int, lost: bool) -> None:
    pool = mergerfs_pool(2)
    b0, b1 = pool.branches
    cfg = setup(pool, tmp_path)
    view = content(manifest(pool.root))
    r = dedupd("run", "--once", "-c", str(cfg), env={"DEDUPD_TEST_KILL_AT_STEP": str(k)},
               check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)
    if lost:  # power cut: later state changes were never synced (see Journal)
        lose_journal_states(tmp_path / "index.db")
    # even before recovery (with the held duplicate's name next to it, after "hold")
    early = content(manifest(pool.root))
    assert {p: h for p, h in early.items() if ".dedupd-hold-" not in p} == view
    rc, out = dedupd_here("recover", "-c", str(cfg))
    assert rc == 0, out
    assert content(manifest(pool.root)) == view
    assert unfinished_ops(tmp_path / "index.db") == []
    for b in pool.branches:  # nothing half-done is left on a branch
        assert not [p for p in b.rglob("*") if ".dedupd-" in p.name]
    assert dedupd_here("run", "--once", "-c", str(cfg))[0] == 0
    assert content(manifest(pool.root)) == view
    assert (b0 / "deep/new dir/x.bin").stat().st_ino == (b0 / "a/x.bin").stat().st_ino
    assert not (b1 / "deep/new dir/x.bin").exists() and not (b1 / "same/z.bin").exists()
    assert (b0 / "deep").stat().st_mode & 0o777 == 0o750


def test_save_before_hold_and_kill_at_every_step(mergerfs_pool: Callable[..., MergerPool],
                                                 tmp_path: Path) -> None:
    """An editor saves b1's same/z.bin right before the cross-drive removal holds its
    name, after its check (the hold takes the save, which must get its name back): the
    2nd mutate point on the name. The run is
    killed after each of its steps in turn. After recovery: the save is b1's
    same/z.bin (if it came before the kill), the pool shows every path, none of our
    names is left on a branch, nothing is unfinished."""
    pool = mergerfs_pool(2)
    b1 = pool.branches[1]
    target = b1 / "same/z.bin"
    steps: list[str] | None = None
    k = 0
    while steps is None or k < len(steps):
        k += 1
        for b in pool.branches:
            for child in b.iterdir():
                shutil.rmtree(child)
        base = tmp_path / ("count" if steps is None else f"kill{k}")
        base.mkdir()
        cfg = setup(pool, base)
        view = content(manifest(pool.root))
        log = base / "steps.log"
        kill = {} if steps is None else {"DEDUPD_TEST_KILL_AT_STEP": str(k)}
        r = subprocess.run([sys.executable, "-m", "tests.integration.saving_run", str(target),
                            "2", "run", "--once", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=120,
                           env={**os.environ, **kill, "DEDUPD_TEST_STEP_LOG": str(log)})
        lines = log.read_text().splitlines()
        if steps is None:  # the first run, not killed, counts the steps
            assert r.returncode == 0, r.stderr
            steps = [x.split(" ", 1)[1] for x in lines if not x.startswith("- ")]
            assert "give back" in steps, steps
            k = 0
            continue
        assert r.returncode == -9, (k, r.returncode, r.stderr)
        assert dedupd_here("recover", "-c", str(cfg))[0] == 0
        assert unfinished_ops(base / "index.db") == []
        for b in pool.branches:
            assert not [p for p in b.rglob("*") if ".dedupd-" in p.name], (k, steps[k - 1])
        assert set(content(manifest(pool.root))) == set(view), (k, steps[k - 1])
        if "- editor save" in lines:
            assert target.read_bytes() == saving_run.SAVED, (k, steps[k - 1])
