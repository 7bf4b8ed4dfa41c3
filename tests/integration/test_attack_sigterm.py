"""A test run stopped by SIGTERM (`timeout`, a CI runner) tears its fixtures down
(tests/fixtures/sigterm.py): a tiny pytest run whose fixture mounts a real tmpfs
is sent SIGTERM mid-test; the mount must be gone when it exits. Before, SIGTERM
killed pytest outright and the mount (a loop mount, a zfs-fuse pool, a
PostgreSQL server in the real suite) stayed behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures import sigterm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

TINY = '''
import os, subprocess, time
from pathlib import Path
import pytest

@pytest.fixture
def mounted():
    mnt = Path(os.environ["MNT"])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tiny", str(mnt)], check=True)
    yield mnt
    Path(os.environ["TEARING"]).touch()
    time.sleep(1.0)  # long enough for a second SIGTERM to arrive meanwhile
    subprocess.run(["umount", str(mnt)], check=True)

def test_waits(mounted):
    (mounted / "f").write_text("x")
    Path(os.environ["READY"]).touch()
    time.sleep(60)
'''


def _wait_for(p: Path, proc: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 60
    while not p.exists():
        assert proc.poll() is None, f"pytest exited before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {what} in 60 s"
        time.sleep(0.05)


@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
def test_sigterm_tears_the_fixtures_down(tmp_path: Path, twice: bool) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "test_tiny.py").write_text(TINY)
    env = {**os.environ, "MNT": str(mnt), "READY": str(tmp_path / "ready"),
           "TEARING": str(tmp_path / "tearing"), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.fixtures.sigterm",
         "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(tmp_path),
         str(tmp_path / "test_tiny.py")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(tmp_path / "ready", proc, "test start")
        assert os.path.ismount(mnt)
        proc.send_signal(signal.SIGTERM)
        if twice:
            _wait_for(tmp_path / "tearing", proc, "teardown")
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
        assert not os.path.ismount(mnt), out
        assert "KeyboardInterrupt" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["umount", str(mnt)], check=False)


def test_this_run_has_the_handler_and_a_forked_child_still_dies_of_sigterm() -> None:
    assert sigterm.is_installed()  # tests/conftest.py loaded it for the whole suite
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # never returns into pytest, whatever happens
        try:
            os.close(r)
            os.write(w, b"up")
            time.sleep(30)
        finally:
            os._exit(3)
    os.close(w)
    try:
        assert os.read(r, 2) == b"up"
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
