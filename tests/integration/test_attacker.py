"""A real unprivileged user attacks the root daemon at every window of a pass.

For each kind (plain on ext4, btrfs, xfs, zfs on zfs-fuse, a mergerfs pool)
the user owns `share/atk/d` inside the volume, holding two identical files.
Outside the volume (same filesystem, and another one) sit private copies of
the same bytes. At one window of the pass (tests hook in through
dedupd/testpoints.py: no sleeps) the user swaps `d` for a symlink to a private
directory, to "/" or to another filesystem; or swaps a file for a symlink or
a hardlink to a file outside; or renames `d` away. After every run nothing
outside the volume was indexed, linked, renamed, created or deleted (a
manifest with inode numbers and link counts), and the swapped location was
refused and counted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dedupd import handles, testpoints
from dedupd.index.store import Store
from dedupd.volumes import PassReport
from tests.fixtures.attacker import User, reachable
from tests.fixtures.index import run_volume_pass
from tests.fixtures.mergerfs import mount_mergerfs
from tests.fixtures.zfs import Pool

pytestmark = pytest.mark.integration
KINDS = ("plain", "btrfs", "xfs", "zfs", "pool")
WINDOWS = ("walk.subdir", "read.open", "verify", "mutate")
SIZE = 64 * 1024
Manifest = dict[str, tuple[int, int, int, int, str]]


def data(seed: int) -> bytes:
    return hashlib.sha256(bytes([seed])).digest() * (SIZE // 32)


def manifest(root: Path) -> Manifest:
    """rel path -> (inode, links, uid, mode, sha256) of everything under root."""
    out: Manifest = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() \
                and not p.is_symlink() else ""
            out[str(p.relative_to(root))] = (st.st_ino, st.st_nlink, st.st_uid, st.st_mode,
                                             digest)
    return out


@dataclass
class Site:
    """One kind's filesystems: where the volume is and what lies outside it."""

    kind: str
    volume: dict[str, Any]
    branches: tuple[Path, ...]  # the volume's roots (one, or a pool's branches)
    outside: Path  # same filesystem as the attacked branch, not in the volume
    other_fs: Path  # a private directory on another filesystem
    fired: list[str] = field(default_factory=list)

    @property
    def attacked(self) -> Path:
        return self.branches[-1]

    def victims(self) -> dict[str, Manifest]:
        return {"outside": manifest(self.outside), "other_fs": manifest(self.other_fs)}


def build(site: Site, atk: User) -> None:
    """A fresh tree: the attacker's pair in share/atk/d, root's pair, private copies."""
    for b in site.branches:
        for child in b.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    for d in (site.outside, site.other_fs):
        if d.exists():
            shutil.rmtree(d)
        (d / "private").mkdir(parents=True)
        (d / "private").chmod(0o700)
        for n in ("v1", "v2"):
            (d / "private" / n).write_bytes(data(1))  # the attacker's bytes, root's files
        (d / "atk-own").mkdir()
        (d / "atk-own" / "mine").write_bytes(data(1))
        atk.owns(d / "atk-own", d / "atk-own" / "mine")
        reachable(d / "atk-own")
    for i, b in enumerate(site.branches):
        d = b / "share" / "atk" / "d"
        d.mkdir(parents=True)
        atk.owns(b / "share" / "atk", d)
        (b / "share").chmod(0o755)
        names = ("a1", "a2") if len(site.branches) == 1 else (f"a{i + 1}",)
        for n in names:
            (d / n).write_bytes(data(1))
            atk.owns(d / n)
        (b / "share" / "root").mkdir()
        (b / "share" / "root" / f"r{i + 1}").write_bytes(data(2))
        if len(site.branches) == 1:
            (b / "share" / "root" / "r2").write_bytes(data(2))
        reachable(d)
    subprocess.run(["sync"], check=True)


def run_pass(site: Site, db: Path) -> PassReport:
    return run_volume_pass(site.volume, db)


def indexed_paths(db: Path) -> list[bytes]:
    store = Store(f"sqlite:///{db}")
    try:
        return [r[0] for r in store.scan_paths()]
    finally:
        store.close()


def refusals(rep: PassReport) -> set[str]:
    reasons = {p["reason"] for p in rep.problems}
    return reasons | {k[len("skips_"):] for k, n in rep.counters.items()
                      if k.startswith("skips_") and n}


@contextmanager
def attack_at(site: Site, window: str, act: Callable[[Path], None]) -> Iterator[None]:
    """Run act(dir d or file under it) once, the first time `window` is reached for a
    path in the attacked branch's share/atk/d, by whichever process reaches it (a
    consolidation walks in a process of its own): that it ran comes back through a
    marker file, into site.fired once the block is done."""
    d = bytes(site.attacked / "share" / "atk" / "d")
    marker = Path(tempfile.mkdtemp(prefix="dedupd-fired-")) / "fired"

    def hook(point: str, path: bytes) -> None:
        if (point == "walk.subdir" and path == d) or \
                (point != "walk.subdir" and path.startswith(d + b"/")):
            try:  # the first time in any process
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                return
            os.write(fd, point.encode())
            os.close(fd)
            act(Path(os.fsdecode(path)))

    site.fired.clear()
    try:
        with testpoints.acting((window,), hook):
            yield
    finally:
        if marker.exists():
            site.fired.append(marker.read_text())
        shutil.rmtree(marker.parent)


def check_nothing_outside(site: Site, before: dict[str, Manifest], db: Path,
                          rep: PassReport, reasons: set[str]) -> None:
    assert site.fired, "the window was never reached: the test proves nothing"
    assert site.victims() == before
    roots = tuple(bytes(b) + b"/" for b in site.branches)
    outside = [p for p in indexed_paths(db) if not p.startswith(roots)]
    assert outside == [], f"indexed outside the volume: {outside}"
    got = refusals(rep)
    assert got & reasons, f"{site.fired}: no refusal among {reasons}: {got}, {rep.problems}"


@pytest.fixture(params=KINDS)
def site(request: pytest.FixtureRequest, tmp_path: Path, attacker: User) -> Iterator[Site]:
    kind = request.param
    other = tmp_path / "other-fs"
    if kind in ("plain", "btrfs", "xfs"):
        mnt = request.getfixturevalue("loopfs")("ext4" if kind == "plain" else kind, "512M")
        vol = mnt / "vol"
        vol.mkdir()
        yield Site(kind, {"kind": kind, "path": str(vol)}, (vol,), mnt / "out", other)
    elif kind == "zfs":
        pool: Pool = request.getfixturevalue("zpool")()
        vol = pool.mountpoint / "vol"
        vol.mkdir()
        yield Site(kind, {"kind": "zfs", "path": str(vol)}, (vol,), pool.mountpoint / "out",
                   other)
    else:
        tmpfs = request.getfixturevalue("tmpfs")
        mounts = (tmpfs("64m"), tmpfs("64m"))
        branches = tuple(m / "br" for m in mounts)
        for b in branches:
            b.mkdir()
        root = tmp_path / "pool"
        mount_mergerfs(branches, root)
        try:
            yield Site(kind, {"kind": "pool", "path": str(root), "pool_root": str(root),
                              "branches": [str(b) for b in branches]},
                       branches, mounts[-1] / "out", other)
        finally:
            subprocess.run(["umount", str(root)], check=False, capture_output=True)


@pytest.fixture(params=["openat2", "by-component"], autouse=True)
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both resolvers: the kernel's openat2 and the O_NOFOLLOW walk kept for old kernels."""
    if request.param == "by-component":
        monkeypatch.setattr(handles, "FORCE_FALLBACK", True)
    else:
        assert handles.have_openat2(), "this kernel has openat2 (5.6+): it must be used"
    return str(request.param)


def configure(site: Site) -> None:
    site.volume.update({"mode": "apply", "settle_seconds": 0, "min_size": 1})


@pytest.mark.parametrize("target", ["private", "root", "other_fs"])
def test_directory_swapped_for_a_symlink_at_every_window(site: Site, attacker: User,
                                                        tmp_path: Path, target: str) -> None:
    configure(site)
    dest = {"private": site.outside / "private", "root": Path("/"),
            "other_fs": site.other_fs / "private"}[target]
    windows = WINDOWS if site.kind not in ("btrfs", "xfs") else \
        ("walk.subdir", "read.open", "mutate")  # the kernel compares inside FIDEDUPERANGE
    for n, window in enumerate(windows):
        build(site, attacker)
        before = site.victims()
        db = tmp_path / f"{target}-{n}.db"

        def swap(p: Path) -> None:
            d = p if p.name == "d" else next(a for a in p.parents if a.name == "d")
            attacker.run('mv "$1" "$1.real" && ln -s "$2" "$1"', str(d), str(dest))

        with attack_at(site, window, swap):
            rep = run_pass(site, db)
        check_nothing_outside(site, before, db, rep, {"path_changed"})


def test_file_swapped_or_directory_renamed_away(site: Site, attacker: User,
                                              tmp_path: Path) -> None:
    configure(site)
    own = site.outside / "atk-own" / "mine"
    attacks: dict[str, tuple[str, tuple[str, ...]]] = {
        # a file becomes a symlink to a private file outside the volume
        "symlink": ('rm -f "$1" && ln -s "$2" "$1"', (str(site.outside / "private" / "v1"),)),
        # a file becomes a hardlink to the attacker's own file outside the volume
        "hardlink": ('rm -f "$1" && ln "$2" "$1"', (str(own),)),
        # the whole directory moves out of the volume (same filesystem)
        "renamed": ('mv "$(dirname "$1")" "$2/"', (str(site.outside / "atk-own"),)),
    }
    windows = ("read.open", "mutate") if site.kind in ("btrfs", "xfs") else \
        ("read.open", "verify", "mutate")
    for name, (script, args) in attacks.items():
        for window in windows:
            build(site, attacker)
            db = tmp_path / f"{name}-{window}.db"
            before: dict[str, Manifest] = {}

            def act(p: Path, script: str = script, args: tuple[str, ...] = args,
                    before: dict[str, Manifest] = before) -> None:
                # the duplicate (a1 is kept: first by path, and on the kept branch)
                dup = next(a for a in [p, *p.parents] if a.name == "d") / "a2"
                attacker.run(script, str(dup), *args)
                before.update(site.victims())  # the attacker's own change is not ours

            with attack_at(site, window, act):
                rep = run_pass(site, db)
            check_nothing_outside(site, before, db, rep,
                                  {"path_changed", "changed", "vanished"})


@pytest.mark.parametrize("window", ["walk.subdir", "read.open"])
def test_consolidation_never_copies_through_a_swapped_directory(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path, window: str) -> None:
    from dedupd.config import ConsolidateConfig
    from dedupd.consolidate.run import Options, consolidate

    mnt = loopfs("ext4", "256M")
    share, archive, private = mnt / "share", mnt / "archive", mnt / "private"
    d = share / "atk" / "d"
    d.mkdir(parents=True)
    archive.mkdir()
    private.mkdir(mode=0o700)
    (private / "secret.bin").write_bytes(data(7))  # a private file nobody may import
    for n, seed in (("mine.bin", 3), ("also.bin", 4)):
        (d / n).write_bytes(data(seed))
        attacker.owns(d / n)
    attacker.owns(share / "atk", d)
    reachable(d)
    site = Site("plain", {}, (mnt,), private, tmp_path / "unused")  # attacks mnt/share/atk/d
    before = manifest(private)

    def swap(p: Path) -> None:
        attacker.run('mv "$1" "$1.real" && ln -s "$2" "$1"', str(d), str(private))

    db = tmp_path / "c.db"
    cfg = ConsolidateConfig("c", (share,), archive, layout="{name}")
    store = Store(f"sqlite:///{db}")
    with attack_at(site, window, swap):
        rep = consolidate(store, cfg, Options()).as_json()
    store.close()
    assert site.fired
    assert manifest(private) == before
    copied = {hashlib.sha256(p.read_bytes()).digest() for p in archive.rglob("*")
              if p.is_file() and not p.name.startswith(".dedupd")}
    assert hashlib.sha256(data(7)).digest() not in copied
    assert [p for p in indexed_paths(db) if p.startswith(bytes(private))] == []
    assert "path_changed" in {p["reason"] for p in rep["problems"]}, rep["problems"]


def test_import_re_resolves_report_paths(loopfs: Callable[..., Path], attacker: User,
                                         tmp_path: Path) -> None:
    # A report names files through a directory the user has since swapped for a
    # symlink to a private directory: the paths are re-resolved and refused.
    from dedupd.interop.reports import CandidateGroup, Claim
    from dedupd.interop.verify import verify_report

    mnt = loopfs("ext4", "256M")
    vol, private = mnt / "vol", mnt / "private"
    d = vol / "share" / "atk" / "d"
    d.mkdir(parents=True)
    private.mkdir(mode=0o700)
    for n in ("v1", "v2"):
        (private / n).write_bytes(data(1))
    attacker.owns(vol / "share" / "atk", d)
    reachable(d)
    attacker.run('rmdir "$1" && ln -s "$2" "$1"', str(d), str(private))
    db = tmp_path / "i.db"
    group = CandidateGroup(tuple(Claim(bytes(d / n)) for n in ("v1", "v2")))
    store = Store(f"sqlite:///{db}")
    v = verify_report(store, [group], [bytes(vol)])
    store.close()
    assert v.groups == []
    assert {p.reason for p in v.skipped} == {"path_changed"}
    assert indexed_paths(db) == []
