"""Fault injection: kill -9 the real process after every journal/filesystem step.

For each step k the `dedupd run` process SIGKILLs itself right after step k
(test hook DEDUPD_TEST_KILL_AT_STEP), then `dedupd recover` runs and the tree
must hold every path with its original bytes, no leftover temporary names, and
no unfinished journal entry. A final normal run must then finish the dedupe.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.linktree import (
    blob,
    config,
    content,
    dedupd,
    dedupd_here,
    inodes,
    lose_journal_states,
    manifest,
    unfinished_ops,
    write,
)

pytestmark = pytest.mark.integration

# Steps of the scenario below, per mode (see test_step_count): 2 names of two
# groups replaced in one batch (group commit): the batch's PENDING rows in one
# synced write, the per-name steps, one filesystem sync, the final states.
STEPS = {
    "exchange": ["journal 2 PENDING", "link temp", "exchange", "unlink temp",
                 "link temp", "exchange", "unlink temp", "sync", "journal 2 states"],
    # no RENAME_EXCHANGE (zfs-fuse, NFS): the name is held, checked, the kept inode
    # linked at it (no RENAME_NOREPLACE either), the held duplicate removed
    "held-link+quarantine": ["journal 2 PENDING",
                             *["link quarantine", "link temp", "hold", "link name",
                               "unlink temp", "unlink hold"] * 2,
                             "sync", "journal 2 states"],
    # no RENAME_EXCHANGE but RENAME_NOREPLACE (SMB): the temp name moves to the name
    "held-noreplace": ["journal 2 PENDING", *["link temp", "hold", "rename", "unlink hold"] * 2,
                       "sync", "journal 2 states"],
}
ENV = {"exchange": {}, "held-link+quarantine": {"DEDUPD_TEST_NO_EXCHANGE": "1"},
       "held-noreplace": {"DEDUPD_TEST_NO_EXCHANGE": "noreplace"}}
MODES = {m: (ENV[m], len(STEPS[m])) for m in STEPS}


def build(base: Path) -> tuple[Path, Path]:
    root = base / "vol"
    write(root / "a/x.bin", blob(1, 200_000))
    os.link(root / "a/x.bin", root / "a/x-link.bin")
    write(root / "b/x copy.bin", blob(1, 200_000))
    write(root / "a/y.bin", blob(2, 150_000))
    write(root / "b/y.bin", blob(2, 150_000))
    write(root / "u.bin", blob(3, 150_000))
    keys = {"kind": "plain", "path": str(root), "settle_seconds": 0, "min_size": 1,
            "mode": "apply"}
    return root, config(base, {"v": keys})


def setup(base: Path, mode: str) -> tuple[Path, Path, dict[str, str]]:
    root, cfg = build(base)
    env = dict(MODES[mode][0])
    if "quarantine" in mode:
        cfg = config(base, {"v": {"kind": "plain", "path": str(root), "settle_seconds": 0,
                                  "min_size": 1, "mode": "apply",
                                  "quarantine_dir": str(base / "q")}})
    return root, cfg, env


@pytest.mark.parametrize("mode", MODES)
def test_step_count(tmpfs: Callable[..., Path], mode: str) -> None:
    base = tmpfs("32m")
    root, cfg, env = setup(base, mode)
    log = base / "steps.log"
    dedupd("run", "--once", "-c", str(cfg), env={**env, "DEDUPD_TEST_STEP_LOG": str(log)})
    steps = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert steps == STEPS[mode]


def _cases() -> list[tuple[str, int]]:
    return [(m, k) for m, (_, n) in MODES.items() for k in range(1, n + 1)]


@pytest.mark.parametrize("lost", [False, True], ids=["journal-intact", "states-lost"])
@pytest.mark.parametrize("mode,k", _cases())
def test_kill_at_step_then_recover(tmpfs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                   mode: str, k: int, lost: bool) -> None:
    base = tmpfs("32m")
    root, cfg, env = setup(base, mode)
    before = content(manifest(root))
    # Only the killed run needs its own process; recovery and the rerun run here.
    r = dedupd("run", "--once", "-c", str(cfg), env={**env, "DEDUPD_TEST_KILL_AT_STEP": str(k)},
               check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)
    if lost:  # power cut: later state changes were never synced (see Journal)
        lose_journal_states(base / "index.db")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rc, out = dedupd_here("recover", "-c", str(cfg), "--json")
    assert rc == 0, out
    assert content(manifest(root)) == before  # every path, original bytes, no temp names
    assert unfinished_ops(base / "index.db") == []
    assert dedupd_here("run", "--once", "-c", str(cfg))[0] == 0
    assert content(manifest(root)) == before
    ino = inodes(root)
    assert len({ino["a/x.bin"], ino["b/x copy.bin"], ino["a/x-link.bin"]}) == 1
    assert ino["a/y.bin"] == ino["b/y.bin"]
