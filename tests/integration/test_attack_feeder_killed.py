"""A hashing process (forked feeder) killed during `dedupd scan`: the scan must
fail with a clear error and exit 1, and leave no process behind. The parent's next
batch for it meets a pipe without a reader (EPIPE): taken for a closed stdout
(cli.main's BrokenPipeError), the scan exited 1 without a word."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from dedupd.cli import main
from dedupd.hashing import forked
from tests.fixtures.procs import children

pytestmark = pytest.mark.integration


def _dead(pid: int) -> bool:
    """pid has exited (a zombie now: its pipes are closed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_hashing_process_killed_during_the_scan_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    for i in range(40):  # sizes of both parities: each feeder gets a share
        (tree / f"f{i}").write_bytes(bytes([i % 4]) * (5000 + i % 2))
    real_put = forked.ForkedFeeders.put

    def put_after_kill(self: forked.ForkedFeeders, batch: Any) -> None:
        victim = self.pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not _dead(victim) and time.monotonic() < deadline:
            time.sleep(0.01)
        real_put(self, batch)

    monkeypatch.setattr(forked.ForkedFeeders, "put", put_after_kill)
    rc = main(["scan", "--db", f"sqlite:///{tmp_path / 'db'}", str(tree)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "dedupd: error: the scan failed: a hashing process died" in err, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 30
    while [p for p in children(os.getpid()) if not _dead(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in children(os.getpid()) if not _dead(p)]
