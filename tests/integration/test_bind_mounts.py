"""A bind mount inside a volume is a mount point like any other, for both resolvers.

The volume (`vol`) lies on a loop-mounted ext4 filesystem; beside it, on the
same filesystem, sits `outside/private` with two identical files. `vol/bind`
is a `mount --bind` of `outside`, so every inode under it has the volume's
st_dev: only the mount id tells that the walk would leave the volume's tree.
`vol/again` is a bind mount of `vol/own`, the volume's own files a second
time. Neither `dedupd scan` nor a plain volume's hardlink pass may enter them
(unless cross_mounts), with the kernel's openat2 and with the by-component
fallback kept for kernels without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dedupd import handles
from dedupd.index.store import Store
from dedupd.volumes import PassReport
from tests.fixtures.components import require_tools
from tests.fixtures.index import run_volume_pass
from tests.fixtures.loopfs import unmount
from tests.oracles import scan_json

pytestmark = pytest.mark.integration
SIZE = 64 * 1024


def data(seed: int) -> bytes:
    return hashlib.sha256(bytes([seed])).digest() * (SIZE // 32)


@dataclass(frozen=True)
class Site:
    vol: Path
    outside: Path

    def inodes(self, root: Path) -> dict[str, tuple[int, int]]:
        """rel path -> (inode, link count) of the files under root."""
        return {str(p.relative_to(root)): (p.lstat().st_ino, p.lstat().st_nlink)
                for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def site(loopfs: Callable[..., Path]) -> Iterator[Site]:
    require_tools("mount", "umount")
    mnt = loopfs("ext4", "256M")
    vol, outside = mnt / "vol", mnt / "outside"
    for d in (vol / "own", vol / "bind", vol / "again", outside / "private"):
        d.mkdir(parents=True)
    for n in ("v1", "v2"):
        (outside / "private" / n).write_bytes(data(1))  # private twins outside the volume
    for n in ("o1", "o2"):
        (vol / "own" / n).write_bytes(data(2))  # the volume's own twins
    binds = [(outside, vol / "bind"), (vol / "own", vol / "again")]
    done: list[Path] = []
    try:
        for src, dst in binds:
            subprocess.run(["mount", "--bind", str(src), str(dst)], check=True,
                           capture_output=True)
            done.append(dst)
        assert (vol / "bind").stat().st_dev == outside.stat().st_dev  # same filesystem
        yield Site(vol, outside)
    finally:
        for d in reversed(done):
            unmount(d)


@pytest.fixture(params=["openat2", "by-component"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both resolvers; the fallback also in `dedupd scan` subprocesses (environment)."""
    if request.param == "by-component":
        monkeypatch.setattr(handles, "FORCE_FALLBACK", True)
        monkeypatch.setenv("DEDUPD_TEST_NO_OPENAT2", "1")
    else:
        monkeypatch.delenv("DEDUPD_TEST_NO_OPENAT2", raising=False)
        assert handles.have_openat2(), "this kernel has openat2 (5.6+): it must be used"
    return str(request.param)


def scanned_paths(doc: dict[str, object]) -> set[str]:
    groups = doc["groups"]
    assert isinstance(groups, list)
    return {p for g in groups for p in g["paths"]}


def test_scan_does_not_enter_a_bind_mount(site: Site, resolver: str, tmp_path: Path) -> None:
    doc = scan_json(site.vol, db=f"sqlite:///{tmp_path}/index.db")
    assert scanned_paths(doc) == {str(site.vol / "own" / "o1"), str(site.vol / "own" / "o2")}
    stats = doc["stats"]
    assert isinstance(stats, dict)
    assert stats["mount_points_skipped"] == 2


def test_scan_with_cross_mounts_enters_it(site: Site, resolver: str, tmp_path: Path) -> None:
    exe = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dedupd"
    r = subprocess.run([str(exe), "scan", "--json", "--cross-mounts", "--db",
                        f"sqlite:///{tmp_path}/index.db", str(site.vol)],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    paths = scanned_paths(json.loads(r.stdout))
    assert str(site.vol / "bind" / "private" / "v1") in paths  # the option does apply


def run_pass(vol: Path, db: Path, **extra: object) -> PassReport:
    return run_volume_pass({"kind": "plain", "path": str(vol), "mode": "apply",
                            "settle_seconds": 0, "min_size": 1, **extra}, db)


def test_hardlink_pass_does_not_cross_a_bind_mount(site: Site, resolver: str,
                                                   tmp_path: Path) -> None:
    before = site.inodes(site.outside)
    rep = run_pass(site.vol, tmp_path / "index.db")
    assert site.inodes(site.outside) == before  # nothing outside linked or replaced
    own = site.inodes(site.vol / "own")
    assert own["o1"] == own["o2"] and own["o1"][1] == 2  # the volume's twins were linked
    store = Store(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        indexed = sorted(r[0] for r in store.scan_paths())
    finally:
        store.close()
    assert indexed == [os.fsencode(site.vol / "own" / n) for n in ("o1", "o2")], rep.problems
