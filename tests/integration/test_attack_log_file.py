"""`dedupd run --detach --log-file PATH` writes as root: a name another user planted at
PATH (a symlink to a file of root's, a FIFO, a file of theirs) is refused before the
daemon is forked, and nothing is written through it.

Before: the log file was opened with open(PATH, "ab"): in a directory another user
may write, a symlink there made root append the daemon's log (names of files that
user chose, newlines included) to any file, e.g. /etc/passwd (fs.protected_symlinks
only guards sticky directories, and is 0 on some hosts: this one); a FIFO hung the
command until someone read it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("planted", ["symlink", "fifo", "their-file"])
def test_a_log_file_planted_by_another_user_is_refused(tmp_path: Path, attacker: User,
                                                       planted: str) -> None:
    logs = tmp_path / "logs"  # a log directory another user may write (theirs)
    logs.mkdir()
    attacker.owns(logs)
    reachable(logs)
    victim = tmp_path / "victim"
    victim.write_bytes(b"root:x:0:0:root:/root:/bin/sh\n")
    log = logs / "dedupd.log"
    script = {"symlink": 'ln -s "$2" "$1"', "fifo": 'mkfifo "$1"',
              "their-file": 'echo mine > "$1"'}[planted]
    attacker.run(script, str(log), str(victim))
    conf = tmp_path / "c.toml"
    bad = tmp_path / "open"  # a runtime dir's parent others may write: the daemon would
    bad.mkdir()              # refuse it at its start (were it ever forked)
    bad.chmod(0o777)
    conf.write_text(f'[daemon]\nruntime_dir = "{bad / "run"}"\n')
    try:
        r = subprocess.run([sys.executable, "-m", "dedupd", "run", "--detach", "-c", str(conf),
                            "--db", f"sqlite:///{tmp_path / 'db'}", "--log-file", str(log)],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("dedupd run --detach still waiting on the log file after 60 s")
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert f"cannot open the log file {log}" in r.stderr, r.stderr
    assert victim.read_bytes() == b"root:x:0:0:root:/root:/bin/sh\n"
    assert not (bad / "run").exists()  # refused before a daemon was forked
    if planted == "their-file":
        assert log.read_bytes() == b"mine\n" and os.lstat(log).st_uid == attacker.uid
