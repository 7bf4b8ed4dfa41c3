"""`dedupd scan` when its walk cannot start (no descriptors left: EMFILE; the same
path as fork's EAGAIN under a pids limit): a clear error and exit 1, never a
traceback: start_walk (commands/scan.py) turns ForkedWalk()'s OSError into a
DedupdError, which cli.main prints as one line (before, "unexpected error (this is
a bug)" with its traceback)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_walk_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_bytes(b"x")

    def few_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))

    r = subprocess.run([sys.executable, "-m", "dedupd", "scan", "--db",
                        f"sqlite:///{tmp_path / 'db'}", str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=120, preexec_fn=few_fds)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("dedupd: error: "), r.stderr
