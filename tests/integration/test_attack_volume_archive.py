"""A volume deduped by hardlinks (plain, zfs, pool) that holds a consolidation's
archive together with other files is a config error (exit 78), unless the volume
excludes the archive: its pass would hardlink an archive file to a name outside the
archive (its source in a share, say), and the next write to that name, in place as
backup tools write, would change the archive's copy.

Before: check-config said OK; `run --apply` linked share/photo.jpg and the archive's
photo.jpg, and a write to the share's file rewrote the archive's bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def dedupd(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dedupd", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp)


def _config(tmp: Path, kind: str, exclude: str = "") -> Path:
    srv = tmp / "srv"
    for d in ("archive", "share"):
        (srv / d).mkdir(parents=True, exist_ok=True)
    cfg = tmp / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp / "db"}"\n'
                   f'[volumes.srv]\nkind = "{kind}"\npath = "{srv}"\nmode = "apply"\n{exclude}'
                   f'[consolidate.v]\nsources = ["{srv / "share"}"]\n'
                   f'archive = "{srv / "archive"}"\n')
    return cfg


@pytest.mark.parametrize("kind", ["plain", "zfs"])
def test_a_hardlink_volume_around_an_archive_is_a_config_error(tmp_path: Path,
                                                               kind: str) -> None:
    cfg = _config(tmp_path, kind)
    r = dedupd(tmp_path, "check-config", "-c", str(cfg))
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert (f"volumes.srv.path: {tmp_path / 'srv'} holds consolidate.v's archive "
            f"{tmp_path / 'srv' / 'archive'}") in r.stderr, r.stderr


def test_excluding_the_archive_keeps_it_apart(tmp_path: Path) -> None:
    archive = tmp_path / "srv" / "archive"
    cfg = _config(tmp_path, "plain", f'exclude = ["{archive}"]\n')
    photo = os.urandom(20000)
    (tmp_path / "srv" / "share" / "photo.jpg").write_bytes(photo)
    assert dedupd(tmp_path, "consolidate", "v", "-c", str(cfg)).returncode == 0
    r = dedupd(tmp_path, "run", "--once", "--apply", "--settle", "0", "--min-size", "1",
               "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    (kept,) = archive.rglob("photo.jpg")
    with open(tmp_path / "srv" / "share" / "photo.jpg", "r+b") as f:  # in place
        f.write(os.urandom(20000))
    assert kept.read_bytes() == photo


def test_an_extent_volume_around_an_archive_is_fine(tmp_path: Path) -> None:
    """btrfs/xfs share extents copy-on-write: a write never reaches the other file."""
    r = dedupd(tmp_path, "check-config", "-c", str(_config(tmp_path, "xfs")))
    assert "archive" not in r.stderr, r.stderr
