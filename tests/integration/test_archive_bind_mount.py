"""An archive that a hardlink volume's walk meets through a bind mount is inside the
volume, as one met by its real path is (test_attack_volume_archive.py): the volume's
own mount is a bind of a directory above the archive, or (cross_mounts) a bind
mount below the volume's root shows it. check-config and run stop (78) unless the
volume excludes the archive at the path the walk meets it; a volume beside the
archive passes.

Before: only real paths were compared (realpath does not see bind mounts), so the
volume's pass could hardlink an archive file to its source in the share, and the
next write to the share's file, in place, changed the archive's copy.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.components import require_tools

pytestmark = pytest.mark.integration


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[list[Path]]:
    """mount --bind, undone at teardown: the list of mount points made."""
    require_tools("mount", "umount")
    made: list[Path] = []
    yield made
    for d in reversed(made):  # os.path.ismount misses a bind of the same filesystem
        if subprocess.run(["umount", str(d)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _bind(made: list[Path], src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(src), str(dst)], check=True, capture_output=True)
    made.append(dst)


def _check(tmp: Path, vol: Path, extra: str = "") -> subprocess.CompletedProcess[str]:
    data = tmp / "data"
    cfg = tmp / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp / "db"}"\n'
                   f'[volumes.srv]\nkind = "plain"\npath = "{vol}"\nmode = "apply"\n{extra}'
                   f'[consolidate.v]\nsources = ["{data / "share"}"]\n'
                   f'archive = "{data / "archive"}"\n')
    return subprocess.run([sys.executable, "-m", "dedupd", "check-config", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=120, cwd=tmp)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for d in ("archive", "share"):
        (tmp_path / "data" / d).mkdir(parents=True)
    return tmp_path / "data"


def test_a_volume_bound_above_the_archive_holds_it(tmp_path: Path, data: Path,
                                                   bind: list[Path]) -> None:
    srv = tmp_path / "srv"
    _bind(bind, data, srv)  # the volume's mount shows data/, the archive in it
    r = _check(tmp_path, srv)
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert (f"{srv} holds consolidate.v's archive {data / 'archive'} (really "
            f"{srv / 'archive'}, through a symlink or a bind mount)") in r.stderr, r.stderr
    ok = _check(tmp_path, srv, f'exclude = ["{srv / "archive"}"]\n')
    assert ok.returncode == 0, (ok.stdout, ok.stderr)


def test_a_bind_mount_below_the_volume_counts_with_cross_mounts(tmp_path: Path, data: Path,
                                                               bind: list[Path]) -> None:
    vol = tmp_path / "vol"
    _bind(bind, data, vol / "in")
    r = _check(tmp_path, vol, "cross_mounts = true\n")
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert f"(really {vol / 'in' / 'archive'}, through" in r.stderr, r.stderr
    # without cross_mounts the walk does not enter vol/in: the archive is never met
    ok = _check(tmp_path, vol)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)


def test_a_volume_beside_the_archive_passes(tmp_path: Path, data: Path,
                                            bind: list[Path]) -> None:
    srv = tmp_path / "srv"
    _bind(bind, data / "share", srv)  # only the share: the archive is elsewhere
    ok = _check(tmp_path, srv)
    assert ok.returncode == 0, (ok.stdout, ok.stderr)


def test_volumes_that_meet_through_a_bind_mount_overlap(tmp_path: Path, data: Path,
                                                        bind: list[Path]) -> None:
    srv = tmp_path / "srv"
    _bind(bind, data, srv)
    cfg = tmp_path / "v.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[volumes.a]\nkind = "plain"\npath = "{srv}"\n'
                   f'[volumes.b]\nkind = "plain"\npath = "{data / "share"}"\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "check-config", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert "volumes must not overlap" in r.stderr, r.stderr
