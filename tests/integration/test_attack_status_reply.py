"""A reply on the control socket that is JSON but not a status document this dedupd
can show (another release's daemon, or any other program listening at the path) is
a clear error, exit 1, never a traceback.

Before: `dedupd status` and `dedupd metrics` printed `KeyError: 'version'` with a
traceback for any reply object without the fields they show ({"ok": true}).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPLIES = [{"ok": True}, {"ok": True, "version": "9", "volumes": 5},
           {"ok": True, "volumes": {"a": {"state": 5}}, "backups": []}]


@pytest.mark.parametrize("reply", REPLIES, ids=["bare", "volumes-number", "volume-fields"])
@pytest.mark.parametrize("cmd", [["status"], ["metrics"]], ids=["status", "metrics"])
def test_a_reply_that_is_no_status_document_is_a_clear_error(
        impostor: tuple[Path, list[dict[str, object]]], tmp_path: Path,
        cmd: list[str], reply: dict[str, object]) -> None:
    path, replies = impostor
    replies.append(reply)
    r = subprocess.run([sys.executable, "-m", "dedupd", *cmd, "--socket", str(path), "--db",
                        f"sqlite:///{tmp_path / 'db'}"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert "not a status document" in r.stderr, r.stderr
