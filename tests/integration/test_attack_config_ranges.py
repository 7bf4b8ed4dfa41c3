"""Numbers beyond what the index or a float can hold are refused where they are read:
a config integer outside TOML's 64-bit range or too large for a float key is a
config error (exit 78) naming the key, and `--min-size` beyond 64 bits a usage error
(exit 2); never a traceback.

Before: `min_size = 99999999999999999999` passed check-config and made `dedupd run`
print `OverflowError: Python int too large to convert to SQLite INTEGER`;
`stop_timeout = 10**400` made check-config print `OverflowError: int too large to
convert to float`; `dedupd scan --min-size 99999999999999999999` was taken.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HUGE = str(10**20)


def dedupd(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dedupd", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp)


@pytest.mark.parametrize(("table", "key", "value", "says"), [
    ("volumes.v", "min_size", HUGE, "must be <= 9223372036854775807"),
    ("volumes.v", "min_size", "-" + HUGE, "must be >= 1"),
    ("daemon", "stop_timeout", str(10**400), "must be a finite number"),
], ids=["int-over", "int-under", "float-key"])
def test_out_of_range_config_numbers_are_config_errors(tmp_path: Path, table: str, key: str,
                                                       value: str, says: str) -> None:
    (tmp_path / "v").mkdir()
    extra = f'kind = "plain"\npath = "{tmp_path / "v"}"\n' if table.startswith("volumes") else ""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f"[{table}]\n{extra}{key} = {value}\n")
    for argv in (["check-config", "-c", str(cfg)], ["run", "--once", "-c", str(cfg)]):
        r = dedupd(tmp_path, *argv)
        assert r.returncode == 78, (argv, r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert f"{table}.{key}: {says}" in r.stderr, r.stderr


def test_a_min_size_beyond_64_bits_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    r = dedupd(tmp_path, "scan", "--min-size", HUGE, "--db", f"sqlite:///{tmp_path / 'db'}",
               str(tmp_path / "t"))
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "not a size" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("argv", [
    ["scan", "--settle", "nan"], ["scan", "--settle", "inf"], ["scan", "--settle", "-1"],
    ["run", "--once", "--settle", "-5"], ["run", "--once", "--settle", "1e30"],
    ["status", "--watch", "-1"], ["restore", "j", "--target", "p/x", "--poll", "nan"],
], ids=["scan-nan", "scan-inf", "scan-negative", "run-negative", "run-huge", "watch-negative",
        "restore-poll-nan"])
def test_a_duration_that_is_no_number_of_seconds_is_a_usage_error(tmp_path: Path,
                                                                  argv: list[str]) -> None:
    """--settle nan made every file settled (nan compares false with every age); a
    negative --watch would reach time.sleep."""
    (tmp_path / "t").mkdir()
    paths = [str(tmp_path / "t")] if argv[0] in ("scan", "run") else []
    r = dedupd(tmp_path, *argv, "--db", f"sqlite:///{tmp_path / 'db'}", *paths)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "seconds" in r.stderr and "Traceback" not in r.stderr, r.stderr
