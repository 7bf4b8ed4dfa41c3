"""`dedupd --help` is cheap: no command module is imported until a command runs,
and every subcommand's own --help works (each in a real `dedupd` process)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dedupd import commands
from dedupd.cli import build_parser

EXE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dedupd"
HEAVY = ("sqlalchemy", "boto3", "botocore", "psycopg", "psycopg2")


def _imported(*argv: str) -> set[str]:
    """The modules a real process has imported after `dedupd ARGV` printed its help."""
    code = ("import json, sys\nfrom dedupd.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e\n"
            "sys.stderr.write(json.dumps(sorted(sys.modules)))\n")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: dedupd" in r.stdout
    return set(json.loads(r.stderr))


def _roots(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


def test_top_level_help_imports_no_command_module_and_nothing_heavy() -> None:
    mods = _imported("--help")
    assert not _roots(mods) & set(HEAVY), sorted(_roots(mods) & set(HEAVY))
    assert "asyncio" not in mods
    assert not [m for m in mods if m.startswith("dedupd.commands.")]


def test_status_help_imports_nothing_heavy() -> None:
    mods = _imported("status", "--help")
    assert not _roots(mods) & set(HEAVY), sorted(_roots(mods) & set(HEAVY))
    assert "dedupd.index.store" not in mods and "dedupd.control" not in mods


def test_the_command_list_says_what_the_modules_register() -> None:
    full = build_parser([], full=True)
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    registered = {c.dest: c.help for c in sub._choices_actions}
    assert list(registered) == list(commands.COMMANDS)
    assert registered == {n: text for n, (_m, text) in commands.COMMANDS.items()}


@pytest.mark.parametrize("name", list(commands.COMMANDS))
def test_every_subcommand_help_works(name: str) -> None:
    r = subprocess.run([str(EXE), name, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: dedupd {name}") and r.stderr == ""


def test_top_level_help_lists_every_command_and_usage_errors_exit_2() -> None:
    r = subprocess.run([str(EXE), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    for name, (_m, text) in commands.COMMANDS.items():
        assert f"    {name}" in r.stdout and text.split()[0] in r.stdout, name
    for argv in ([], ["bogus"], ["-h", "scan"]):
        r = subprocess.run([str(EXE), *argv], capture_output=True, text=True, timeout=120)
        if argv == ["-h", "scan"]:  # help asked before the command: the top-level help
            assert r.returncode == 0 and "    consolidate" in r.stdout
        else:
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            assert "usage: dedupd" in r.stderr
    r = subprocess.run([str(EXE), "bogus"], capture_output=True, text=True, timeout=120)
    assert "invalid choice: 'bogus'" in r.stderr and "'scan'" in r.stderr


@pytest.mark.parametrize("argv", [["scan", "/"], ["groups"], ["where", "/etc/hostname"]])
def test_a_db_url_that_is_not_one_is_a_usage_error(argv: list[str]) -> None:
    """--db is checked as [database].url is (a config error there): a bare path is
    exit 2 naming the option, before any index is opened; was exit 1 at the open."""
    r = subprocess.run([str(EXE), argv[0], "--db", "/tmp/not-a-url.db", *argv[1:]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "argument --db: must be a sqlite:/// or postgresql:// URL" in r.stderr
    assert "Traceback" not in r.stderr
    assert not Path("/tmp/not-a-url.db").exists()
