"""The consolidation's index writer (a forked process, consolidate/writer.py) killed
during a run: the run must fail with a clear error and exit 1. The run's next rows
for it met a pipe without a reader (EPIPE), which cli.main takes for a closed stdout:
the run exited 1 without a word, the copies placed, their rows not written."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from dedupd.cli import main
from dedupd.consolidate import writer
from tests.fixtures.consolidate import write, write_config

pytestmark = pytest.mark.integration


def test_an_index_writer_killed_during_a_run_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    src, archive = tmp_path / "s", tmp_path / "archive"
    for i in range(6):
        write(src / f"f{i}.bin", os.urandom(20_000 + i), "2019-01-01")
    archive.mkdir()
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "x", [src], archive)
    real_write = writer.IndexWriter.write

    def write_after_kill(self: writer.IndexWriter, *args: Any) -> None:
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # dead (a zombie): its pipes are closed
            if Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.01)
        real_write(self, *args)

    monkeypatch.setattr(writer.IndexWriter, "write", write_after_kill)
    rc = main(["consolidate", "-c", str(cfg), "x"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "dedupd: error: writing the index failed" in err, err
    assert "Traceback" not in err
