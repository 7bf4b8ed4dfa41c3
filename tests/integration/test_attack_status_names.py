"""File names reach `dedupd status` (a volume's `doing`, the last errors' paths and
messages, what comes next): on a terminal and in the plain view they are shown with
control characters escaped, and rich never reads them as markup.

Before: the terminal view passed a path to rich as markup, so a file named
`x[/]y` made `dedupd status` fail with a MarkupError traceback, and
`[link=https://...]click[/link]` became a clickable link to anywhere; ESC sequences
in a name (set the window title, clear the screen) went to the admin's terminal
raw, in both views.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.tty import run_on_tty

pytestmark = pytest.mark.integration

EVIL = ["/srv/x[/]y", "/srv/[link=https://evil.example]click[/link]",
        "/srv/a\x1b]0;pwned\x07b\x1b[2J"]


def _doc(path: str) -> dict[str, Any]:
    now = time.time()
    vol = {"name": "v", "kind": "plain", "mode": "apply", "paused": False, "state": "hashing",
           "queue": {"rescan_requested": False}, "counters": {}, "bytes_reclaimed": 0,
           "rates": {"files_per_s": 0.0, "bytes_per_s": 0.0},
           "passes": {"completed": 1, "started": 2, "failed": 0}, "pass_started_at": now,
           "last_pass_finished_at": None, "last_pass_seconds": None, "next_pass_at": None,
           "doing": f"reading {path}"}
    return {"ok": True, "version": "9", "pid": 1, "state": "running", "uptime": 5,
            "bytes_reclaimed": 0, "volumes": {"v": vol}, "backups": {},
            "next_events": [{"at": now + 60, "what": f"pass of {path}"}],
            "last_errors": [{"time": now, "where": "v", "path": path,
                             "error": f"cannot read {path}"}]}


@pytest.mark.parametrize("path", EVIL, ids=["markup-close", "markup-link", "escapes"])
def test_names_in_the_status_are_shown_not_obeyed(
        impostor: tuple[Path, list[dict[str, Any]]], path: str) -> None:
    sock, replies = impostor
    replies += [_doc(path), _doc(path)]
    tty = run_on_tty("status", "--socket", str(sock), cols=200, stdout_too=True)
    plain = subprocess.run([sys.executable, "-m", "dedupd", "status", "--socket", str(sock)],
                           capture_output=True, timeout=60)
    for out, rc in ((tty.tty, tty.returncode), (plain.stdout + plain.stderr, plain.returncode)):
        text = out.decode("utf-8", "replace")
        assert rc == 0 and "Traceback" not in text, text[-2000:]
        assert "\x1b]0;" not in text and "\x1b[2J" not in text and "\x1b]8;" not in text
        shown = path.replace("\x1b", "\\x1b").replace("\x07", "\\x07")
        assert shown in text.replace("\r\n", "\n"), text[-2000:]
