"""Fault injection: kill -9 the real process after every journal/filesystem step.

For each step k the `dedupd run` process SIGKILLs itself right after step k
(test hook DEDUPD_TEST_KILL_AT_STEP), then `dedupd recover` runs and the tree
must hold every path with its original bytes, no leftover temporary names, and
no unfinished journal entry. A final normal run must then finish the dedupe.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration import saving_run
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


HELD = ["held-link+quarantine", "held-noreplace"]


@pytest.mark.parametrize("held", ["duplicate", "changed"])
@pytest.mark.parametrize("mode", HELD)
def test_killed_while_held_then_saved(tmpfs: Callable[..., Path],
                                      monkeypatch: pytest.MonkeyPatch, mode: str,
                                      held: str) -> None:
    """Killed right after a duplicate's name was held (the name is missing), an editor
    saves at that name before recovery runs. Recovery leaves the save at the name and
    drops our extra names; the held duplicate goes if it has the kept file's bytes
    (`duplicate`), as the save's rename would have removed it, else it stays under its
    hold name (`changed`: written in place after the kill)."""
    base = tmpfs("32m")
    root, cfg, env = setup(base, mode)
    before = content(manifest(root))
    k = STEPS[mode].index("hold") + 1
    r = dedupd("run", "--once", "-c", str(cfg), env={**env, "DEDUPD_TEST_KILL_AT_STEP": str(k)},
               check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)
    [hold] = root.rglob(".dedupd-hold-*")
    [rel] = set(before) - set(content(manifest(root)))
    if held == "changed":
        with open(hold, "ab") as f:
            f.write(b"!")
    write(root / rel, saving_run.SAVED)
    kept = hold.read_bytes()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rc, out = dedupd_here("recover", "-c", str(cfg), "--json")
    assert rc == 0, out
    after = content(manifest(root))
    assert after.pop(rel) == hashlib.sha256(saving_run.SAVED).hexdigest()
    if held == "changed":
        assert after.pop(str(hold.relative_to(root))) == hashlib.sha256(kept).hexdigest()
        assert "stays at" in out
    assert after == {p: h for p, h in before.items() if p != rel}
    assert unfinished_ops(base / "index.db") == []


@pytest.mark.parametrize("at", ["before hold", "while held"])
@pytest.mark.parametrize("mode", HELD)
def test_save_and_kill_at_every_step(tmpfs: Callable[..., Path],
                                     monkeypatch: pytest.MonkeyPatch, mode: str,
                                     at: str) -> None:
    """An editor saves b/y.bin (a duplicate) right before its name is held (the hold
    takes the save: it must get its name back) or while it is held (the name is
    missing: the kept inode must not take it), and the run is killed after each of
    its steps in turn. After recovery: b/y.bin is the save (if it came before the
    kill), every other path has its bytes, none of our names is left, nothing is
    unfinished; a rerun then links x."""
    # The mutate points on the name: [the exchange tried: renameat2 exists], hold, place.
    n = 1 if at == "before hold" else 2 + (mode == "held-noreplace")
    for name, value in env_of(mode).items():
        monkeypatch.setenv(name, value)
    steps, k = None, 0
    while steps is None or k < len(steps):
        k += 1
        base = tmpfs("32m")
        root, cfg, env = setup(base, mode)
        before = content(manifest(root))
        log = base / "steps.log"
        target = str(root / "b/y.bin")
        argv = [sys.executable, "-m", "tests.integration.saving_run", target, str(n),
                "run", "--once", "-c", str(cfg)]
        kill = {} if steps is None else {"DEDUPD_TEST_KILL_AT_STEP": str(k)}
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                           env={**os.environ, **env, **kill, "DEDUPD_TEST_STEP_LOG": str(log)})
        if steps is None:  # the first run, not killed, counts the steps
            assert r.returncode == 0, r.stderr
            steps = [line.split(" ", 1)[1] for line in log.read_text().splitlines()
                     if not line.startswith("- ")]
            assert ("give back" in steps) == (at == "before hold"), steps
            k = 0
            continue
        assert r.returncode == -9, (k, r.returncode, r.stderr)
        saved = "- editor save" in log.read_text().splitlines()
        assert dedupd_here("recover", "-c", str(cfg))[0] == 0
        after = content(manifest(root))
        if saved:
            before["b/y.bin"] = hashlib.sha256(saving_run.SAVED).hexdigest()
        assert after == before, (k, steps[k - 1], saved)
        assert unfinished_ops(base / "index.db") == []
        assert dedupd_here("run", "--once", "-c", str(cfg))[0] == 0
        ino = inodes(root)
        assert len({ino["a/x.bin"], ino["b/x copy.bin"], ino["a/x-link.bin"]}) == 1


def env_of(mode: str) -> dict[str, str]:
    return dict(MODES[mode][0])


@pytest.mark.parametrize("mode", ["exchange", *HELD])
def test_a_swap_undone_is_synced_before_its_state(tmpfs: Callable[..., Path],
                                                  mode: str) -> None:
    """A batch whose only swap is undone (an editor saved right before the name was
    exchanged or held: the save is swapped or given back) syncs the filesystem before
    the final state is written: a state is never revisited by recovery, so after a
    power cut it must not be on disk ahead of the undo."""
    base = tmpfs("32m")
    root = base / "vol"
    write(root / "a/y.bin", blob(2, 150_000))
    write(root / "b/y.bin", blob(2, 150_000))
    cfg = config(base, {"v": {"kind": "plain", "path": str(root), "settle_seconds": 0,
                              "min_size": 1, "mode": "apply"}})
    log = base / "steps.log"
    argv = [sys.executable, "-m", "tests.integration.saving_run", str(root / "b/y.bin"), "1",
            "run", "--once", "-c", str(cfg)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                       env={**os.environ, **env_of(mode), "DEDUPD_TEST_STEP_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    steps = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    undo = ["exchange", "exchange back"] if mode == "exchange" else ["hold", "give back"]
    assert steps == ["journal PENDING", "link temp", "editor save", *undo, "sync",
                     "journal 1 states"]
    assert (root / "b/y.bin").read_bytes() == saving_run.SAVED
    assert unfinished_ops(base / "index.db") == []
