"""A volume reached through a directory another user may change is refused.

A volume's path is resolved once (realpath) and its pass works beneath it by
handle. A volume configured inside a user's directory (their home) that the user
replaced with a symlink to a root-only directory was deduplicated there by root
(its identical files hardlinked; a pool's duplicates removed). Such a path is now
a config error (exit 78) at check-config and every run, and nothing is touched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration


def test_a_volume_in_a_users_directory_is_refused(tmp_path: Path, attacker: User) -> None:
    home, victim = tmp_path / "home", tmp_path / "victim"
    home.mkdir()
    victim.mkdir()
    attacker.owns(home)
    reachable(home)
    for n in ("a.conf", "b.conf"):
        (victim / n).write_text("the same, root's\n" * 100)
    attacker.run('ln -s "$1" "$2"', str(victim), str(home / "data"))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[volumes.v]\npath = "{home / "data"}"\nkind = "plain"\nmode = "apply"\n'
                   'min_size = 1\nsettle_seconds = 0\n')
    for argv in (["check-config"], ["run", "--once"]):
        r = subprocess.run([sys.executable, "-m", "dedupd", *argv, "-c", str(cfg)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 78, (argv, r.returncode, r.stdout, r.stderr)
        assert f"volumes.v.path: {home / 'data'}: {home} may be changed by another user" \
            in r.stderr, r.stderr
    assert [(victim / n).stat().st_nlink for n in ("a.conf", "b.conf")] == [1, 1]
