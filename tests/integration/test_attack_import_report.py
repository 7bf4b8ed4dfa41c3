"""`dedupd import` trusts nothing in a report, its shape included: a report nested
too deeply for the JSON parser, a size too big for an integer, or a path with a NUL
byte is a clear error (exit 2), never a traceback.

Before: RecursionError, OverflowError (int(1e999)) and `ValueError: stat: embedded
null character in path` were printed with a traceback, exit 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPORTS = {
    "deep": "[" * 100_000 + "]" * 100_000,
    "infinite-size": '{"matchSets": [{"fileSize": 1e999, "fileList": [{"filePath": "a"}, '
                     '{"filePath": "b"}]}]}',
    "nul-in-path": json.dumps({"matchSets": [{"fileSize": 5000, "fileList": [
        {"filePath": "a\x00b"}, {"filePath": "a"}]}]}),
}


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_a_broken_report_is_a_clear_error(tmp_path: Path, name: str) -> None:
    data = os.urandom(5000)
    for f in ("a", "b"):
        (tmp_path / f).write_bytes(data)
    (tmp_path / "r.json").write_text(REPORTS[name])
    r = subprocess.run([sys.executable, "-m", "dedupd", "import", "r.json", "--db",
                        f"sqlite:///{tmp_path / 'db'}"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("dedupd: error: r.json: not "), r.stderr
