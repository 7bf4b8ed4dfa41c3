"""Recovery decides a hardlink op is finished when the duplicate's name is the kept
inode by number (journal: keep_dev, keep_ino). Inode numbers are reused: on ext4 a
file created right after another's last name went usually gets its number. Killed
while the duplicate was held (no RENAME_EXCHANGE), the user removes the kept file
(and the temp link next to its duplicate's missing name) and saves a new file at
that name: the new file has the kept file's old number. The held duplicate is then
the last copy of its bytes and must not be removed on the number alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.linktree import blob, config, dedupd, dedupd_here, unfinished_ops, write

pytestmark = pytest.mark.integration

HOLD_STEP = 3  # journal 1 PENDING, link temp, hold (test_hardlink_killpoints.STEPS)


@pytest.mark.parametrize("fallback", ["1", "noreplace"])
def test_held_duplicate_kept_when_the_name_has_a_reused_inode(
        loopfs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, fallback: str) -> None:
    base = loopfs("ext4", "64M")
    root = base / "vol"
    old = blob(7, 100_000)
    write(root / "a/k.bin", old)
    write(root / "b/d.bin", old)
    cfg = config(base, {"v": {"kind": "plain", "path": str(root), "settle_seconds": 0,
                              "min_size": 1, "mode": "apply"}})
    env = {"DEDUPD_TEST_NO_EXCHANGE": fallback}
    keep_ino = (root / "a/k.bin").stat().st_ino
    r = dedupd("run", "--once", "-c", str(cfg),
               env={**env, "DEDUPD_TEST_KILL_AT_STEP": str(HOLD_STEP)}, check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)
    assert len(list(root.rglob(".dedupd-hold-*"))) == 1
    assert not (root / "b/d.bin").exists()
    # The user: the kept file and the stray temp link are removed, a new file saved
    # at the missing name (written elsewhere, renamed there).
    (root / "a/k.bin").unlink()
    for t in root.rglob(".dedupd-tmp-*"):
        t.unlink()
    new = write(root / "b/.d.new", b"new" * 100)
    if new.stat().st_ino != keep_ino:
        pytest.skip("ext4 gave the new file another number")
    os.rename(new, root / "b/d.bin")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rc, out = dedupd_here("recover", "-c", str(cfg), "--json")
    assert rc == 0, out
    assert unfinished_ops(base / "index.db") == []
    assert (root / "b/d.bin").read_bytes() == b"new" * 100
    # the duplicate's bytes: no other copy is left; they must still be somewhere
    left = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    assert old in left, out
