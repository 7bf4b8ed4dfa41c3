"""A SQLite index made by an older release (0644: the umask's mode) is readable by
every local user: every path of every volume, the names under other users' private
directories too, with their hashes. dedupd now takes the others' permissions away
from it (and its -wal and -shm files) when it opens it, and says so; new indexes
are 0600 already (test_attack_index_private.py). Before: it stayed readable, and
nothing was said.
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


def _peek(attacker: User, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}", "--clear-groups",
         "--", "/usr/bin/python3", "-c", "import sqlite3, sys; c = sqlite3.connect("
         "f'file:{sys.argv[1]}?immutable=1', uri=True); "
         "print(c.execute('SELECT name FROM entries').fetchall())", str(db)],
        capture_output=True, text=True, timeout=60)


def _scan(db: Path, tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dedupd", "scan", "--no-progress", "--db",
                           f"sqlite:///{db}", str(tree)], capture_output=True, text=True,
                          timeout=120)


def test_an_index_readable_by_everyone_is_made_private(tmp_path: Path, attacker: User) -> None:
    os.chmod(tmp_path, 0o755)
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    (home / "diagnosis-2026.pdf").write_bytes(os.urandom(9000))
    os.chmod(home, 0o700)
    index_dir = tmp_path / "var" / "lib" / "dedupd"
    index_dir.mkdir(parents=True, mode=0o755)
    db = index_dir / "dedupd.db"
    assert _scan(db, tmp_path / "home").returncode == 0
    with sqlite3.connect(db) as c:  # as an older release left it: 0644, with a WAL
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE IF NOT EXISTS t (x)")
    os.chmod(db, 0o644)
    reachable(index_dir)
    assert "diagnosis" in _peek(attacker, db).stdout  # anyone reads it

    r = _scan(db, tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert f"index {db} was readable by every user (mode 0644" in r.stderr, r.stderr
    assert "now 0640" in r.stderr, r.stderr
    for p in index_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o007 == 0, (p, oct(p.stat().st_mode))
    peek = _peek(attacker, db)
    assert peek.returncode != 0 and "diagnosis" not in peek.stdout, (peek.stdout, peek.stderr)
    again = _scan(db, tmp_path / "home")  # nothing more to say
    assert again.returncode == 0 and "readable" not in again.stderr, again.stderr


def test_an_index_of_another_user_is_not_changed_but_named(tmp_path: Path,
                                                           attacker: User) -> None:
    """One that cannot be changed (not ours, unprivileged) is only warned about, with
    the command that makes it private."""
    db = tmp_path / "dedupd.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    os.chmod(tmp_path, 0o755)
    reachable(tmp_path)
    r = subprocess.run(
        ["setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}", "--clear-groups",
         "--", sys.executable, "-c",
         "import sys; from dedupd.index.db import Db; Db(sys.argv[1])",
         f"sqlite:///{db}"], capture_output=True, text=True, timeout=60,
        cwd="/", env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert f"chmod o-rwx {db}" in r.stderr, (r.returncode, r.stderr)
    assert stat.S_IMODE(db.stat().st_mode) == 0o644


def test_a_symlink_beside_the_index_is_not_followed(tmp_path: Path) -> None:
    """The index's -wal and -shm names are looked at, not through: a symlink there
    (to a file every user may read) kept its target's mode. Before: root chmodded
    the target 0640 (/etc/passwd, say: logins of every other user broken)."""
    db = tmp_path / "dedupd.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o600)
    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    os.chmod(victim, 0o644)
    os.symlink(victim, f"{db}-shm")
    r = subprocess.run([sys.executable, "-c", "import sys; from dedupd.index.db import Db; "
                        "Db(sys.argv[1])", f"sqlite:///{db}"],
                       capture_output=True, text=True, timeout=60)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644, r.stderr
    assert "victim" not in r.stderr and "-shm is now" not in r.stderr, r.stderr
