"""`dedupd backup` takes its job lock in the runtime directory only after the checks
the daemon makes of that directory (a real directory of root's, in a parent no other
user may change): a runtime_dir another user owns is a config error (exit 78), and
nothing is created through a name they planted there.

Before: the lock was opened O_RDWR|O_CREAT, following symlinks, in whatever
runtime_dir said: a symlink planted there made root create an empty 0600 file
anywhere (e.g. /etc/nologin: no one but root may log in).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration


def test_a_lock_name_planted_in_the_runtime_dir_creates_nothing(tmp_path: Path,
                                                                attacker: User) -> None:
    rt = tmp_path / "rt"  # a careless runtime_dir: another user made it first
    rt.mkdir()
    attacker.owns(rt)
    reachable(rt)
    target = tmp_path / "nologin"
    attacker.run('ln -s "$2" "$1"', str(rt / "backup-j.lock"), str(target))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[daemon]\nruntime_dir = "{rt}"\n[backups.j]\ndataset = "nopool/none"\n'
                   '[backups.j.target]\nkind = "rclone"\nremote = "nosuchremote"\npath = "x"\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "backup", "j", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and f"{rt}: is owned by uid {attacker.uid}" in r.stderr
    assert not target.exists()
