"""An editor's atomic save (a new file renamed over the name) against the hardlink
swap where names cannot be exchanged (zfs-fuse, NFS, SMB: no RENAME_EXCHANGE). The
swap holds the duplicate's name (renames it to a name of its own), checks the held
file, gives the kept inode the name without replacing anything made there meanwhile,
and gives a held save its name back (fsops.swap.Swap, dedup/link_exec._held_swap).
Before it renamed the temp link over whatever the name held after the last re-stat:
a save in that instant lost its bytes (k=20: before rename(temp, d/b)).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.attacker import User
from tests.fixtures.zfs import Pool
from tests.integration import test_attack_session as session
from tests.integration.test_attacker import SIZE, Site

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fallback", ["rename", "noreplace"])
def test_atomic_save_at_every_point_with_the_rename_fallback(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, fallback: str) -> None:
    """ext4 told it cannot exchange (DEDUPD_TEST_NO_EXCHANGE): without any renameat2
    flag (rename), or with RENAME_NOREPLACE only (noreplace, as on SMB)."""
    session.test_atomic_save_at_every_point_is_kept(loopfs, attacker, tmp_path,
                                                    monkeypatch, fallback)


# The user writes a new file in its own directory and renames it over root's file.
SAVE = f'head -c {SIZE} /dev/zero | tr "\\0" S > "$1/.b.new" && mv -f "$1/.b.new" "$1/b"'


def test_user_saves_at_every_point_on_zfs_fuse(zpool: Callable[..., Pool], attacker: User,
                                               tmp_path: Path) -> None:
    """A real zfs-fuse dataset (no RENAME_EXCHANGE, no RENAME_NOREPLACE for a new name)
    and a real unprivileged user who owns the directories and saves root's d/b at the
    k-th test point of a `zfs` volume's pass, for every k: the save is d/b afterwards,
    every other content of root's is still there, nothing of ours is left, and the
    held swap ran (a hold name was reached)."""
    pool = zpool("256M")
    subprocess.run(["zfs", "create", pool.dataset("v")], check=True, capture_output=True,
                   timeout=120)
    vol = pool.mountpoint / "v"
    site = Site("zfs", {"kind": "zfs", "path": str(vol), "mode": "apply",
                        "settle_seconds": 0, "min_size": 1},
                (vol,), tmp_path / "unused", tmp_path / "unused")
    saved = b"S" * SIZE
    k, held = 0, False
    while True:
        k += 1
        d, e = session.root_files_in_user_dirs(vol, attacker)
        others = {(d / "a").read_bytes(), (e / "b").read_bytes()}
        fired, seen, rep = session.pass_acting_at(
            site, tmp_path / f"db{k}", k, lambda d=d: attacker.run(SAVE, str(d)))
        held = held or any(b"/.dedupd-hold-" in p for _, p in seen)
        if not fired:  # not saved: root's three equal files became one inode
            assert len({(x / "a").stat().st_ino for x in (d, e)} |
                       {(d / "b").stat().st_ino}) == 1, rep.problems
            break
        assert (d / "b").read_bytes() == saved, (k, seen[k - 1], rep.problems)
        now = [p for p in vol.rglob("*") if p.is_file()]
        assert others <= {p.read_bytes() for p in now}, (k, seen[k - 1])
        assert not [p for p in now if p.name.startswith(".dedupd-")], (k, seen[k - 1])
    assert held and k > 10, (held, k)


# The user replaces root's file by a directory of its own holding a file.
TO_DIR = 'rm -f "$1/b" && mkdir "$1/b" && echo mine > "$1/b/f"'


@pytest.mark.parametrize("fallback", ["1", "noreplace"])
def test_user_dir_put_at_the_name_at_every_point_stays(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, fallback: str) -> None:
    """The user puts a directory at d/b at the k-th test point, for every k, without
    RENAME_EXCHANGE: a held directory gets its name back too (with links only, by a
    rename that cannot replace a file), so d/b is the user's directory afterwards and
    no name of ours is left."""
    monkeypatch.setenv("DEDUPD_TEST_NO_EXCHANGE", fallback)
    site, vol = session.plain_site(loopfs, tmp_path)
    k = 0
    while True:
        k += 1
        d, _e = session.root_files_in_user_dirs(vol, attacker)
        fired, seen, rep = session.pass_acting_at(
            site, tmp_path / f"db{k}", k, lambda d=d: attacker.run(TO_DIR, str(d)))
        if not fired:
            break
        assert (d / "b" / "f").read_text() == "mine\n", (k, seen[k - 1], rep.problems)
        assert not [p for p in vol.rglob(".dedupd-*")], (k, seen[k - 1])
    assert k > 10, k
