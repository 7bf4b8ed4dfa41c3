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


@pytest.mark.parametrize("kill_at", [3, 5])
def test_writer_killed_amid_flushes_then_a_rerun_makes_the_index_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], kill_at: int) -> None:
    """Batches of two, so many flushes follow each other (the writer may hold several
    in one transaction): the writer is killed before the kill_at-th flush, whatever it
    had not committed is lost. The next run copies nothing again (the copies placed
    are found in the archive and compared), writes a row for every source path, and
    `dedupd where` names each archive file's sources."""
    import json

    from dedupd.consolidate.execute import BATCH_ENV
    from dedupd.index import provenance as prov
    from dedupd.index.store import Store

    src, archive = tmp_path / "s", tmp_path / "archive"
    data = {f"f{i}.bin": os.urandom(20_000 + i) for i in range(12)}
    for name, b in data.items():
        write(src / name, b, "2019-01-01")
    write(src / "again" / "f0.bin", data["f0.bin"], "2019-01-01")  # a second path
    archive.mkdir()
    db = tmp_path / "db.sqlite"
    cfg = write_config(tmp_path / "c.toml", db, "x", [src], archive, 'layout = "{name}"\n')
    monkeypatch.setenv(BATCH_ENV, "2")
    real_write = writer.IndexWriter.write
    calls = [0]

    def write_then_kill(self: writer.IndexWriter, *args: Any) -> None:
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                stat = Path(f"/proc/{self.pid}/stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] == "Z":
                    break
                time.sleep(0.01)
        real_write(self, *args)

    with monkeypatch.context() as m:
        m.setattr(writer.IndexWriter, "write", write_then_kill)
        rc = main(["consolidate", "-c", str(cfg), "x"])
    err = capsys.readouterr().err
    assert rc == 1 and "writing the index failed" in err, err
    placed = {p.name: p.read_bytes() for p in archive.iterdir() if p.suffix == ".bin"}
    assert placed and all(data[n] == b for n, b in placed.items())

    assert main(["consolidate", "-c", str(cfg), "x", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["stats"]["problems"] == 0, rep["problems"]
    assert rep["stats"]["files_copied"] == len(data) - len(placed)
    names = sorted(p.name for p in archive.iterdir() if p.suffix == ".bin")
    assert names == sorted(data)  # each content once: nothing imported twice
    store = Store(f"sqlite:///{db}")
    try:
        rows = prov.load(store, "x")
    finally:
        store.close()
    assert len(rows) == len(data) + 1
    for path, row in rows.items():
        assert Path(os.fsdecode(row.archive_path)).read_bytes() == Path(
            os.fsdecode(path)).read_bytes()
    assert main(["where", "-c", str(cfg), "--json", str(archive / "f0.bin")]) == 0
    w = json.loads(capsys.readouterr().out)
    assert sorted(s["source"] for s in w["sources"]) == sorted(
        [str(src / "f0.bin"), str(src / "again" / "f0.bin")]), w
