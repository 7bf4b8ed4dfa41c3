"""`dedupd status` on a terminal: rich tables, through a real pseudo-terminal.

Piped, the same command prints the plain columns scripts read
(test_daemon_socket.py::test_status_command_human_and_not_running), and
--json the document (docs/status.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.fixtures.daemon import REPO
from tests.fixtures.tty import run_on_tty
from tests.integration.test_daemon_lifecycle import make_tree

pytestmark = pytest.mark.integration
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def test_status_on_a_terminal_is_a_table(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 40, distinct=10)
    dp = dedupd_daemon({"photos": {"path": str(vol), "settle_seconds": 3600}})
    doc = dp.wait_until(lambda d: d["volumes"]["photos"]["passes"]["completed"] == 1)
    tty = run_on_tty("status", "-c", str(dp.cfg), cols=120, stdout_too=True)
    assert tty.returncode == 0, tty.tty[-2000:]
    assert b"\x1b[" in tty.tty  # styled for the terminal
    shown = ANSI.sub(b"", tty.tty).decode()
    lines = shown.splitlines()
    assert lines[0].startswith("dedupd ") and f"pid {dp.proc.pid}" in lines[0]
    header = next(x for x in lines if "VOLUME" in x)
    assert re.findall(r"[A-Z]+", header) == ["VOLUME", "STATE", "PASSES", "COUNTERS", "RATE",
                                             "RECLAIMED"]
    assert header[0] == "┃" and any(x.startswith("└") for x in lines)  # a boxed table
    row = next(i for i, x in enumerate(lines) if x.startswith("│ photos"))
    cells = [[c.strip() for c in x.strip("│").split("│")] for x in lines[row:row + 4]]
    assert cells[0][1] == "idle" and cells[0][2] == "1/1 done"
    assert cells[1][0] == "plain" and cells[2][0] == "dry-run"
    assert re.fullmatch(r"last \d\d:\d\d:\d\d \(\d+\.\ds\)", cells[1][2]), cells
    # the counters are the daemon's: 40 files seen, all of them too fresh to settle
    counters = doc["volumes"]["photos"]["counters"]
    assert counters["files_seen"] == 40 and counters["files_pending"] == 40
    assert [c[3] for c in cells] == ["40 seen", "0 read (0 B)", "40 skipped (settling)",
                                     "0 would dedupe"]
    assert any(x.startswith(" ") and "pass of volume photos" in x for x in lines)  # next
    # piped: the plain columns, no escape codes, no boxes
    piped = subprocess.run([sys.executable, "-m", "dedupd", "status", "-c", str(dp.cfg)],
                           cwd=REPO, capture_output=True, timeout=60)
    assert piped.returncode == 0 and b"\x1b" not in piped.stdout and "│".encode() not in \
        piped.stdout
    assert piped.stdout.decode().splitlines()[1].split()[:4] == ["VOLUME", "KIND", "MODE",
                                                                 "STATE"]
    # --json on a terminal is still the document
    tty = run_on_tty("status", "--json", "-c", str(dp.cfg), stdout_too=True)
    assert tty.returncode == 0
    got = json.loads(tty.tty.replace(b"\r\n", b"\n"))
    assert got["volumes"]["photos"]["counters"]["files_seen"] == 40
    assert dp.stop() == 0
