"""Path arguments that name nothing are usage errors (exit 2) and files a command
cannot write are clear errors (exit 1), never a traceback or a silent success.

Before: `dedupd scan /no/such/path` exited 0 with "vanished: disappeared during the
walk"; `dedupd scan ''` scanned the current directory (realpath('') is the cwd),
and so did every Path argument given '' (Path('') is '.'); `dedupd metrics -o` into
a missing directory and `dedupd run --detach --log-file` in one printed a traceback.
A missing path given on the command line is exit 2, as `dedupd run /no/such`
already was; one named by the config stays the config's error (78, or 75 for a
volume not mounted yet).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def dedupd(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dedupd", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp)


def _clear(r: subprocess.CompletedProcess[str], code: int, says: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert says in r.stderr, r.stderr


def test_scanning_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    db = f"sqlite:///{tmp_path / 'db'}"
    r = dedupd(tmp_path, "scan", "--db", db, str(tmp_path / "t"), "/no/such/path")
    _clear(r, 2, "no such file or directory: /no/such/path")
    assert "vanished" not in r.stderr and r.stdout == ""
    _clear(dedupd(tmp_path, "scan", "--db", db, "/etc/passwd/x"), 2,
           "no such file or directory: /etc/passwd/x")


def test_scanning_an_empty_path_is_refused_not_the_current_directory(tmp_path: Path) -> None:
    for name in ("a", "b"):  # a duplicate pair in the cwd: scanned, it would be reported
        (tmp_path / name).write_bytes(b"same bytes")
    r = dedupd(tmp_path, "scan", "--db", f"sqlite:///{tmp_path / 'db'}", "")
    _clear(r, 2, "an empty path names nothing")
    assert r.stdout == ""


@pytest.mark.parametrize("argv", [
    ["where", ""], ["run", "--once", ""], ["metrics", "-o", ""], ["status", "--socket", ""],
    ["import", ""], ["import", "r.json", "--base", ""], ["groups", "-c", ""],
], ids=["where", "run", "metrics", "status-socket", "import", "import-base", "config"])
def test_an_empty_path_argument_is_a_usage_error(tmp_path: Path, argv: list[str]) -> None:
    (tmp_path / "r.json").write_text("[]")
    r = dedupd(tmp_path, *argv, "--db", f"sqlite:///{tmp_path / 'db'}")
    _clear(r, 2, "an empty path names nothing")


def test_metrics_into_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[daemon]\nruntime_dir = "{tmp_path / "run"}"\n')
    out = tmp_path / "gone" / "dedupd.prom"
    r = dedupd(tmp_path, "metrics", "-c", str(conf), "--db", f"sqlite:///{tmp_path / 'db'}",
               "-o", str(out))
    _clear(r, 1, f"dedupd: error: cannot write {out}: No such file or directory")
    (tmp_path / "gone").mkdir()
    r = dedupd(tmp_path, "metrics", "-c", str(conf), "--db", f"sqlite:///{tmp_path / 'db'}",
               "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "dedupd_up 0" in out.read_text() and out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in (tmp_path / "gone").iterdir()] == ["dedupd.prom"]


def test_a_detached_daemon_whose_log_file_cannot_be_opened_is_a_clear_error(
        tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'[daemon]\nruntime_dir = "{tmp_path / "run"}"\n')
    log = tmp_path / "gone" / "dedupd.log"
    r = dedupd(tmp_path, "run", "--detach", "-c", str(conf), "--db",
               f"sqlite:///{tmp_path / 'db'}", "--log-file", str(log))
    _clear(r, 1, f"dedupd: error: cannot open the log file {log}: No such file or directory")
    assert not (tmp_path / "run").exists()  # refused before a daemon was forked
