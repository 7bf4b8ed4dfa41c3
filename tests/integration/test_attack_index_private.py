"""A SQLite index that dedupd creates is readable by its owner only (0600, and so are
its -wal and -shm files: SQLite gives them the database's mode), in a directory it
creates 0700.

The index holds every path of every volume, the names under other users' private
(0700) directories included, and a hash of each file: root's daemon wrote it 0644
in a 0755 /var/lib/dedupd, so any local user could list another user's private
file names and test whether a given file is among them (by its hash), as mlocate
would if it did not check permissions at query time. An unprivileged user reads it.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration


def test_a_new_index_is_private(tmp_path: Path, attacker: User) -> None:
    os.chmod(tmp_path, 0o755)
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    (home / "diagnosis-2026.pdf").write_bytes(os.urandom(9000))
    os.chmod(home, 0o700)  # alice's: nobody else may list it
    index_dir = tmp_path / "var" / "lib" / "dedupd"
    db = index_dir / "dedupd.db"
    r = subprocess.run([sys.executable, "-m", "dedupd", "scan", "--db", f"sqlite:///{db}",
                        str(tmp_path / "home")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for p in index_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p, oct(p.stat().st_mode))
    assert stat.S_IMODE(index_dir.stat().st_mode) == 0o700
    with sqlite3.connect(db) as c:  # the name is in there
        assert b"diagnosis-2026.pdf" in {bytes(n) for (n,) in c.execute("SELECT name FROM entries")}
    reachable(index_dir.parent)
    peek = subprocess.run(
        ["setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}", "--clear-groups",
         "--", "/usr/bin/python3", "-c", "import sqlite3, sys; c = sqlite3.connect("
         "f'file:{sys.argv[1]}?immutable=1', uri=True); "
         "print(c.execute('SELECT name FROM entries').fetchall())", str(db)],
        capture_output=True, text=True, timeout=60)
    assert peek.returncode != 0 and "diagnosis" not in peek.stdout, (peek.stdout, peek.stderr)
