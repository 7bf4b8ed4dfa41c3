"""A hardlink volume (plain, zfs, pool) that holds a consolidation's archive among
other files must keep its walk out of the archive (test_attack_volume_archive.py),
and the walk goes by real paths (volumes.volume_roots): a symlink in the volume's
path or the archive's does not make the archive apart.

Before: the check compared the paths as written. A volume at a symlink with an
exclude naming the archive through that symlink passed check-config, the walk
(under the real path) entered the archive, and `run --once --apply` hardlinked a
share's file to the archive's copy; an archive configured through a symlink to a
directory inside the volume passed as well.
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


def _site(tmp: Path, vol: Path, archive: Path, exclude: list[Path]) -> Path:
    """real/srv holds archive/ and share/ (one photo in each, the same bytes)."""
    srv = tmp / "real" / "srv"
    photo = os.urandom(20000)
    for d in ("archive", "share"):
        (srv / d).mkdir(parents=True, exist_ok=True)
        (srv / d / "photo.jpg").write_bytes(photo)
    excl = ", ".join(f'"{p}"' for p in exclude)
    cfg = tmp / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp / "db"}"\n'
                   f'[volumes.srv]\nkind = "plain"\npath = "{vol}"\nmode = "apply"\n'
                   f"exclude = [{excl}]\n"
                   f'[consolidate.v]\nsources = ["{srv / "share"}"]\narchive = "{archive}"\n')
    return cfg


def _refused(tmp: Path, cfg: Path) -> None:
    real = tmp / "real" / "srv"
    for args in (("check-config",), ("run", "--once", "--apply", "--settle", "0",
                                     "--min-size", "1")):
        r = dedupd(tmp, *args, "-c", str(cfg))
        assert r.returncode == 78, (args, r.returncode, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        assert f'add "{real / "archive"}" to volumes.srv.exclude' in r.stderr, r.stderr
    # nothing linked: the share's photo and the archive's are still two files
    assert os.stat(real / "share" / "photo.jpg").st_nlink == 1
    assert os.stat(real / "archive" / "photo.jpg").st_nlink == 1


def test_a_volume_at_a_symlink_excluding_the_archive_by_that_symlink(tmp_path: Path) -> None:
    (tmp_path / "real" / "srv").mkdir(parents=True)
    (tmp_path / "srv").symlink_to(tmp_path / "real" / "srv")
    link = tmp_path / "srv"
    _refused(tmp_path, _site(tmp_path, link, link / "archive", [link / "archive"]))


def test_an_archive_configured_through_a_symlink_into_the_volume(tmp_path: Path) -> None:
    real = tmp_path / "real" / "srv"
    real.mkdir(parents=True)
    (tmp_path / "arch").symlink_to(real / "archive")
    _refused(tmp_path, _site(tmp_path, real, tmp_path / "arch", []))


def test_excluding_the_real_path_as_well_keeps_it_apart(tmp_path: Path) -> None:
    real = tmp_path / "real" / "srv"
    real.mkdir(parents=True)
    (tmp_path / "srv").symlink_to(real)
    link = tmp_path / "srv"
    cfg = _site(tmp_path, link, link / "archive", [link / "archive", real / "archive"])
    assert dedupd(tmp_path, "check-config", "-c", str(cfg)).returncode == 0
    r = dedupd(tmp_path, "run", "--once", "--apply", "--settle", "0", "--min-size", "1",
               "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert os.stat(real / "share" / "photo.jpg").st_nlink == 1
