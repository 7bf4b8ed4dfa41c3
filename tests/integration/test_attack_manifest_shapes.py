"""A manifest that is JSON but not an object is skipped like any unreadable one.

catalog.load promises that a damaged manifest (or one from a newer dedupd) is
skipped with a warning: it must not stop listing or new backups. A manifest
holding `[]`, `null`, `"x"` or nesting deeper than Python's recursion limit
(planted in a remote someone else can write, or left by a broken tool) made
Manifest.from_bytes raise AttributeError / RecursionError, and `dedupd backups`
printed a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SHAPES = {"list": b"[]", "null": b"null", "string": b'"x"', "deep": b"[" * 100_000}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_manifest_of_another_shape_is_skipped(tmp_path: Path, shape: str) -> None:
    remote = tmp_path / "remote"
    (remote / "j" / "manifests").mkdir(parents=True)
    (remote / "j" / "manifests" / "20260101T000000Z-0badf00d.json").write_bytes(SHAPES[shape])
    conf = tmp_path / "rclone.conf"
    conf.write_text("[loc]\ntype = local\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[daemon]\nruntime_dir = "{tmp_path / "run"}"\n'
                   '[backups.j]\ndataset = "nopool/data"\n'
                   f'[backups.j.target]\nkind = "rclone"\nremote = "loc"\n'
                   f'path = "{remote}"\nconfig = "{conf}"\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "backups", "j", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "not a valid manifest" in r.stderr and "skipping it" in r.stderr, r.stderr
