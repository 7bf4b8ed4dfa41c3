"""A backup in a local rclone remote is readable by root alone.

The chunks hold the dataset's whole `zfs send` stream: every file's bytes, those
of files only their owner may read included. They were written with rclone's
modes under the daemon's umask (files 0644, directories 0755) and the manifests
0644, so when the remote lay where other users can look (a path an admin made
with mkdir, 0755), an unprivileged user read a root-only file's contents out of
the chunks (zstd -d, then the stream's write records hold the bytes as stored).
Backup tools keep their repositories private (restic 0600/0700, borg umask 077).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.attacker import User, reachable
from tests.integration.backup_util import config_dict, mountpoint, write_toml

pytestmark = pytest.mark.integration

# Each file of the remote as the user reads it, decompressed when it is zstd.
LOOK = ('find "$1" -type f 2>/dev/null | while read -r f; do '
        'zstd -dcq -- "$f" 2>/dev/null || cat -- "$f" 2>/dev/null || true; done')


def test_the_user_reads_nothing_of_a_backup(tmp_path: Path, zpool: Any,
                                            attacker: User) -> None:
    pool = zpool("256M")
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    secret = secrets.token_hex(16)
    private = mountpoint(pool, "data") / "private.txt"
    private.write_text(f"{secret}\n" * 64)
    private.chmod(0o600)
    remote = tmp_path / "backups" / "remote"
    remote.parent.mkdir()
    remote.parent.chmod(0o755)
    reachable(remote.parent)
    conf = tmp_path / "rclone.conf"
    conf.write_text("[loc]\ntype = local\n")
    target = {"kind": "rclone", "remote": "loc", "path": str(remote), "config": str(conf)}
    cfg = write_toml(tmp_path / "c.toml", config_dict(tmp_path, pool, target))
    r = subprocess.run([sys.executable, "-m", "dedupd", "backup", "j", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=300, umask=0o022)
    assert r.returncode == 0, r.stderr
    as_root = subprocess.run(["sh", "-c", LOOK, "root", str(remote)], capture_output=True,
                             timeout=120)
    assert secret.encode() in as_root.stdout  # the bytes are there to be found
    as_user = subprocess.run(["setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}",
                              "--clear-groups", "--", "sh", "-c", LOOK, "attacker",
                              str(remote)], capture_output=True, timeout=120,
                             env={**os.environ, "HOME": "/"})
    assert secret.encode() not in as_user.stdout, as_user.stderr
    for dirpath, dirs, files in os.walk(remote):
        for n in dirs + files:
            mode = (Path(dirpath) / n).lstat().st_mode & 0o777
            assert not mode & 0o077, (Path(dirpath) / n, oct(mode))
