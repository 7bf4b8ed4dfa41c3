"""File names a user chose (ESC and BEL sequences, a newline and a forged line, C1
CSI, rich markup) are shown escaped as `dedupd status` shows them (output.show_path,
rich Text: never markup) by `dedupd run`, `journal`, `recover` and `import`, and in
log lines: never raw on the admin's terminal or in the journal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EVIL = "e\x1b]0;pwned\x07\nforged line [bold red]mk[not bold] \u009b2J.bin"
SHOWN = "e\\x1b]0;pwned\\x07\\nforged line [bold red]mk[not bold] \\x9b2J.bin"
RAW = ("\x1b", "\x07", "\u009b", "\nforged")


def _dedupd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dedupd", *args], capture_output=True,
                          text=True, errors="surrogateescape", timeout=120,
                          env={**os.environ, **(env or {})})


def _shown_escaped(r: subprocess.CompletedProcess[str], times: int = 1) -> None:
    out = r.stdout + r.stderr
    for raw in RAW:
        assert raw not in out, (r.args, out)
    assert out.count(SHOWN) >= times, (r.args, out)


@pytest.fixture
def volume(tmp_path: Path) -> tuple[Path, Path]:
    vol = tmp_path / "vol"
    vol.mkdir()
    data = os.urandom(100_000)
    (vol / EVIL).write_bytes(data)
    (vol / "b.bin").write_bytes(data)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "index.db"}"\n'
                   f'[volumes.v]\npath = "{vol}"\nkind = "plain"\nsettle_seconds = 0\n')
    return vol, cfg


def test_run_journal_and_recover_escape_names(volume: tuple[Path, Path]) -> None:
    vol, cfg = volume
    _shown_escaped(_dedupd("run", "--once", "--no-progress", "-c", str(cfg), "--dry-run"))
    # the run killed after its journal's PENDING rows and first link: an unfinished op
    r = _dedupd("run", "--once", "--no-progress", "--apply", "-c", str(cfg),
                env={"DEDUPD_TEST_KILL_AT_STEP": "2"})
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)
    journal = _dedupd("journal", "-c", str(cfg))
    assert "(unfinished)" in journal.stdout, journal.stdout
    _shown_escaped(journal)
    rec = _dedupd("recover", "-c", str(cfg))
    assert rec.returncode == 0, rec.stderr
    assert "1 unfinished operations resolved" in rec.stdout
    _shown_escaped(_dedupd("journal", "-c", str(cfg)))
    assert (vol / EVIL).read_bytes() == (vol / "b.bin").read_bytes()


def test_import_escapes_names(volume: tuple[Path, Path], tmp_path: Path) -> None:
    vol, cfg = volume
    (vol / (EVIL + "x")).write_bytes(b"a" * 5000)
    (vol / "c.bin").write_bytes(b"b" * 5000)
    report = tmp_path / "dups.json"
    files = [[EVIL, "b.bin", "gone " + EVIL], [EVIL + "x", "c.bin"]]
    report.write_text(json.dumps({"matchSets": [
        {"fileSize": os.path.getsize(vol / names[0]),
         "fileList": [{"filePath": os.fsdecode(os.fsencode(vol / n))} for n in names]}
        for names in files]}))
    r = _dedupd("import", "-c", str(cfg), str(report))
    assert r.returncode == 0, r.stderr
    _shown_escaped(r, times=3)  # verified, missing ("gone ..."), differs ("...x")
    assert "skipped (missing)" in r.stdout and "skipped (differs)" in r.stdout


@pytest.mark.parametrize("journald", [False, True])
def test_a_log_line_naming_a_file_is_one_line(journald: bool) -> None:
    """Under journald each line of a record gets the priority prefix: a newline in a
    name made a line of the attacker's, at the priority it chose."""
    code = ("import logging, sys; from dedupd import log; log.setup(); "
            "logging.getLogger('dedupd.x').warning('cannot link %s', sys.argv[1])")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journald:
        env["JOURNAL_STREAM"] = "8:1234"
    r = subprocess.run([sys.executable, "-c", code, EVIL.replace("forged", "<3>forged")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, lines
    assert "\x1b" not in r.stderr and "\u009b" not in r.stderr and "\x07" not in r.stderr
    assert lines[0].endswith("cannot link " + SHOWN.replace("forged", "<3>forged"))
    assert lines[0].startswith("<4>dedupd.x: " if journald else "")


@pytest.mark.parametrize("journald", [False, True])
def test_a_logged_traceback_naming_a_file_keeps_its_lines(journald: bool) -> None:
    """A record with a traceback (logger.exception) whose exception quotes a file name
    as it is: the traceback keeps its own lines, the name's newline and controls are
    escaped (a newline in it made a line of the attacker's, under journald at the
    priority it chose)."""
    code = ("import logging, sys; from dedupd import log; log.setup()\n"
            "try:\n    raise RuntimeError('cannot read ' + sys.argv[1])\n"
            "except RuntimeError:\n    logging.getLogger('dedupd.x').exception('walk failed')")
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journald:
        env["JOURNAL_STREAM"] = "8:1234"
    evil = EVIL.replace("forged", "<3>forged")
    r = subprocess.run([sys.executable, "-c", code, evil],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr and "\u009b" not in r.stderr and "\x07" not in r.stderr
    lines = r.stderr.splitlines()
    pri = "<3>" if journald else ""
    assert lines[0].startswith(f"{pri}dedupd.x: walk failed" if journald else ""), lines
    assert lines[1] == f"{pri}Traceback (most recent call last):", lines
    assert lines[-1] == f"{pri}RuntimeError: cannot read " + SHOWN.replace("forged",
                                                                             "<3>forged")
    assert not any(ln.startswith((f"{pri}<3>forged", "<3>forged")) for ln in lines), lines


def test_an_error_naming_a_file_is_one_escaped_line(tmp_path: Path) -> None:
    """`dedupd: error: ...` (a DedupdError quoting a config file's name) and argparse's
    `dedupd scan: error: ...` (a PATH argument that does not exist) show the name
    escaped: one line, no terminal sequence."""
    missing = tmp_path / EVIL
    for args in (("check-config", "-c", str(missing)), ("scan", str(missing))):
        r = _dedupd(*args)
        assert r.returncode in (2, 78), (args, r.returncode, r.stderr)
        _shown_escaped(r)
        errors = [line for line in r.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1 and errors[0].endswith(SHOWN + (
            ": -: file not found" if args[0] == "check-config" else "")), r.stderr
