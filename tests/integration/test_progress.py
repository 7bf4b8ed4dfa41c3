"""Progress on a terminal for every long command; nothing at all on a pipe.

stderr is a real pseudo-terminal (tests/fixtures/tty.py). The display is
transient, so what is checked is the byte stream the terminal received: the
phases, counts with their totals, rates and ETAs were drawn, and stdout (a
pipe) is the same report as without a terminal.
"""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.s3 import Moto
from tests.fixtures.tty import run_on_tty, run_piped
from tests.integration.backup_util import config_dict, mountpoint, s3_target, write_files
from tests.integration.backup_util import write_toml as write_backup_toml

pytestmark = pytest.mark.integration
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def screen(raw: bytes) -> str:
    """The terminal bytes without escape sequences, one drawn line per line."""
    return ANSI.sub(b"", raw).replace(b"\r", b"\n").decode("utf-8", "replace")


def make_tree(root: Path, n: int) -> Path:
    """n files in pairs of identical content, sizes spread so groups are small."""
    for i in range(n):
        d = root / f"d{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(f"{i // 2}\n".encode() * (200 + i // 2))
    return root


def assert_silent_on_pipe(r: subprocess.CompletedProcess[bytes], logs: bool = False) -> None:
    """No progress on a pipe: stderr empty, or (logs) only log lines, no drawing."""
    assert r.returncode == 0, r.stderr
    if not logs:
        assert r.stderr == b"", r.stderr[:500]
    for drawn in (b"\x1b", b"\r", "━".encode(), b"ETA", b"/s "):
        assert drawn not in r.stderr, r.stderr[:500]


def test_scan_progress_on_a_terminal_only(tmp_path):
    tree = make_tree(tmp_path / "t", 3000)
    tty = run_on_tty("scan", str(tree), "--db", f"sqlite:///{tmp_path}/a.db")
    assert tty.returncode == 0, tty.tty[-2000:]
    shown = screen(tty.tty)
    assert re.search(r"^walk .* 3,000 files .*files/s", shown, re.MULTILINE), shown[-2000:]
    assert re.search(r"^hash .* 3,000/3,000 files .*ETA", shown, re.MULTILINE), shown[-2000:]
    piped = run_piped("scan", str(tree), "--db", f"sqlite:///{tmp_path}/b.db")
    assert_silent_on_pipe(piped)
    # the report itself is the same (the last line has the run's duration)
    assert tty.stdout.splitlines()[:-1] == piped.stdout.splitlines()[:-1]
    assert b"1500 groups" in piped.stdout and b"\x1b" not in piped.stdout
    # --no-progress silences even a terminal
    quiet = run_on_tty("scan", str(tree), "--db", f"sqlite:///{tmp_path}/c.db", "--no-progress")
    assert quiet.returncode == 0 and quiet.tty == b""
    # a command done before the display's delay draws nothing either
    quick = run_on_tty("scan", str(tree / "d0"), "--db", f"sqlite:///{tmp_path}/d.db",
                       delay="30")
    assert quick.returncode == 0 and quick.tty == b"" and b"groups" in quick.stdout


def test_run_once_progress(tmp_path):
    tree = make_tree(tmp_path / "vol", 600)
    args = ("run", "--once", str(tree), "--settle", "0", "--min-size", "1",
            "--db", f"sqlite:///{tmp_path}/i.db")
    tty = run_on_tty(*args)
    assert tty.returncode == 0, screen(tty.tty)[-2000:]
    shown = screen(tty.tty)
    assert re.search(r": walk .* 600 files", shown), shown[-2000:]
    assert re.search(r": hash\+dedupe .* 600 files .*300 groups", shown), shown[-2000:]
    assert_silent_on_pipe(run_piped(*args[:-1], f"sqlite:///{tmp_path}/j.db"))


def test_consolidate_progress(tmp_path):
    src = make_tree(tmp_path / "src", 200)
    archive = tmp_path / "archive"
    archive.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/i.db"\n\n[consolidate.x]\n'
                   f'sources = ["{src}"]\narchive = "{archive}"\n')
    tty = run_on_tty("consolidate", "x", "-c", str(cfg))
    assert tty.returncode == 0, screen(tty.tty)[-2000:]
    shown = screen(tty.tty)
    assert re.search(r"^walk .* files", shown, re.MULTILINE), shown[-2000:]
    assert re.search(r"^hash .* 200 files", shown, re.MULTILINE), shown[-2000:]
    # 100 distinct contents to copy: files and bytes, each with its total
    m = re.search(r"^copy .* 100/100 files +([0-9.]+ KiB)/([0-9.]+ KiB) .*/s", shown,
                  re.MULTILINE)
    assert m and m.group(1) == m.group(2), shown[-2000:]
    assert len(list(archive.rglob("f*"))) == 100
    cfg2 = tmp_path / "c2.toml"
    archive2 = tmp_path / "archive2"
    archive2.mkdir()
    cfg2.write_text(cfg.read_text().replace(str(archive), str(archive2)).replace("i.db", "j.db"))
    assert_silent_on_pipe(run_piped("consolidate", "x", "-c", str(cfg2)))


def test_backup_and_restore_progress(tmp_path: Path, zpool: Any, moto: Moto,
                                     s3_bucket: str) -> None:
    pool = zpool("256M")
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    write_files(mountpoint(pool, "data"), random.Random(3), 6, 400_000)
    conf = write_backup_toml(tmp_path / "dedupd.toml", config_dict(
        tmp_path, pool, s3_target(moto.url, s3_bucket)))
    tty = run_on_tty("backup", "j", "-c", str(conf))
    assert tty.returncode == 0, screen(tty.tty)[-2000:]
    drawn = re.findall(r"^upload .* (\d+) chunks +([0-9.]+ MiB) .*/s", screen(tty.tty),
                       re.MULTILINE)
    assert drawn, screen(tty.tty)[-2000:]
    # the display's last count is the report's: every chunk, every byte stored
    stored = re.search(r"(\d+) chunks, ([0-9.]+ MiB) stored", tty.stdout.decode())
    assert stored and drawn[-1] == stored.groups(), (drawn, tty.stdout)
    (mountpoint(pool, "data") / "more").write_bytes(b"more\n" * 10000)
    assert_silent_on_pipe(run_piped("backup", "j", "-c", str(conf)), logs=True)

    dest = pool.dataset("restored")
    tty = run_on_tty("restore", "j", "--target", dest, "--yes", "-c", str(conf))
    assert tty.returncode == 0, screen(tty.tty)[-2000:]
    shown = screen(tty.tty)
    n = int(stored.group(1))
    assert re.search(rf"^download\+verify .* {n + 1}/{n + 1} chunks", shown, re.MULTILINE), \
        shown[-2000:]
    assert re.search(rf"^receive .* {n + 1}/{n + 1} chunks .*MiB/.*MiB", shown, re.MULTILINE), \
        shown[-2000:]
    # (a new dataset: zfs-fuse may call the one just received busy for a while)
    assert_silent_on_pipe(run_piped("restore", "j", "--target", pool.dataset("again"), "--yes",
                                    "-c", str(conf)), logs=True)
