"""`dedupd scan` forks its walk before it imports what only the rest of the scan needs:
every module imported before the fork is start-up time of every rescan that nothing
else runs beside (docs/schema.md: an unchanged rescan's walk is most of its time)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

# what the walk does not use: each is milliseconds of import (dataclasses pulls inspect,
# ast and dis; hashlib OpenSSL; socket.py its enums) or the index and its SQLite
NOT_BEFORE_THE_WALK = ("dataclasses", "inspect", "logging", "pathlib", "hashlib", "_hashlib",
                       "socket", "threading", "traceback", "json", "sqlite3",
                       "dedupd.index.store", "dedupd.scan.scanner", "dedupd.config")

# records sys.modules at the first fork (the walk's), then runs the real command
_CODE = """\
import sys
from dedupd import forkpipe
real, seen = forkpipe.spawn, []
def spawn(work):
    seen.append(seen or sorted(sys.modules))
    return real(work)
forkpipe.spawn = spawn
from dedupd.cli import main
rc = main(sys.argv[1:])
import json
sys.stderr.write("\\n" + json.dumps(seen[0]))
sys.exit(rc)
"""


def _modules_at_the_walks_fork(tmp_path: Path, *argv: str) -> tuple[set[str], str]:
    r = subprocess.run([sys.executable, "-c", _CODE, "scan", "--no-progress", "--db",
                        f"sqlite:///{tmp_path}/i.db", *argv], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stderr.splitlines()[-1])), r.stdout


def test_the_walk_is_forked_before_logging_the_index_and_dataclasses(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "d").mkdir(parents=True)
    for name in ("a", "d/b"):
        (tree / name).write_bytes(b"same bytes")
    for _ in range(2):  # a first scan, then a rescan (digests known, answer kept)
        mods, out = _modules_at_the_walks_fork(tmp_path, str(tree))
        assert "dedupd.scan.walk" in mods and "argparse" in mods
        assert not mods & set(NOT_BEFORE_THE_WALK), sorted(mods & set(NOT_BEFORE_THE_WALK))
        assert out.startswith("# 2 files of 10 B") and "1 groups" in out, out


# the console entry (cli.run): a plain command line has its walk forked before
# argparse; the modules then imported are written out at that first fork
_CODE_RUN = """\
import os, sys
from dedupd import forkpipe
real = forkpipe.spawn
def spawn(work):
    if forkpipe.spawn is spawn:
        forkpipe.spawn = real
        mods = sorted(sys.modules)
        os.write(2, ("\\n" + repr(mods) + "\\n").encode())
    return real(work)
forkpipe.spawn = spawn
sys.argv[0] = "dedupd"
from dedupd.cli import run
run()
"""


def test_a_plain_command_line_forks_its_walk_before_argparse_and_typing(
        tmp_path: Path) -> None:
    """Before the walk of a plain `dedupd scan` command line is forked (cli.run ->
    scan_first), nothing is imported but the walk's own modules: not argparse, nor
    typing with re and enum (~5 ms of a rescan while one core waits: the records
    of those modules are dedupd.tuples.NamedTuples)."""
    tree = tmp_path / "t"
    tree.mkdir()
    for name in ("a", "b"):
        (tree / name).write_bytes(b"same bytes")
    for _ in range(2):  # a first scan, then a rescan
        r = subprocess.run([sys.executable, "-c", _CODE_RUN, "scan", "--no-progress",
                            "--db", f"sqlite:///{tmp_path}/i.db", str(tree)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        mods = set(ast.literal_eval(next(x for x in r.stderr.splitlines() if x[:1] == "[")))
        assert "dedupd.scan.walkproc" in mods and "dedupd.commands.scan_first" in mods
        late = {"argparse", "typing", "re", "enum", "signal", *NOT_BEFORE_THE_WALK}
        assert not mods & late, sorted(mods & late)
        assert "1 groups" in r.stdout, r.stdout


# runs the command, then says whether logging was ever imported, then imports it as a
# late module would and logs through it
_LATE_LOG = """\
import sys
from dedupd.cli import main
rc = main(sys.argv[1:])
sys.stdout.write("\\nlogging imported: %s\\n" % ("logging" in sys.modules))
# nor dataclasses (with inspect, ast and dis: ~10 ms of its CPU)
sys.stdout.write("dataclasses imported: %s\\n" % ("dataclasses" in sys.modules))
sys.stdout.flush()
import logging
logging.getLogger("dedupd.late").info("a late record")
logging.getLogger("dedupd.late").debug("not at this level")
sys.exit(rc)
"""


def test_an_unchanged_rescan_imports_no_logging_nor_dataclasses_and_logs_late_records(
        tmp_path: Path) -> None:
    """cli's deferred log set-up (log_later): nothing on an unchanged rescan's path
    imports logging (nor dataclasses: its records are NamedTuples and slotted
    classes); whatever imports it later logs through the handler, level and format
    the command line asked for (here: JSON lines at info)."""
    tree = tmp_path / "t"
    tree.mkdir()
    for name in ("a", "b"):
        (tree / name).write_bytes(b"same bytes")
    argv = [sys.executable, "-c", _LATE_LOG, "scan", "--no-progress", "--log-json",
            "--db", f"sqlite:///{tmp_path}/i.db", str(tree)]
    for run in ("first", "rescan"):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "1 groups" in r.stdout, r.stdout
        if run == "rescan":
            assert "logging imported: False" in r.stdout, r.stdout
            assert "dataclasses imported: False" in r.stdout, r.stdout
        lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
        assert [(x["level"], x["logger"], x["msg"]) for x in lines] == [
            ("info", "dedupd.late", "a late record")], r.stderr
