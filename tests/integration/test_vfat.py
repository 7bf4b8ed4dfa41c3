"""A FAT filesystem (mkfs.vfat on a loop image): no inode numbers of its own, no
ctime, 2-second mtimes, no hard links.

Mounted by the kernel where it has vfat, else through FUSE (fusefat): both make
inode numbers up as files are looked up, so a remount hands them out again in
another order. The index must not take a number for the file it named before;
an unchanged rescan reads nothing; a plain volume (hard links) is refused with
a clear message before anything is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.components import missing, require_tools
from tests.oracles import scan_json

pytestmark = pytest.mark.integration
EXE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dedupd"
SIZE = 100_000
OLD = 1_600_000_000 * 10**9  # an mtime long past (a stick's files are old)


def _kernel_vfat() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == "vfat" for line in f if line.strip())


@dataclass
class Fat:
    img: Path
    mnt: Path

    @property
    def vol(self) -> Path:
        return self.mnt / "vol"

    def mount(self) -> None:
        if _kernel_vfat():
            r = subprocess.run(["mount", "-t", "vfat", "-o", "loop", str(self.img),
                                str(self.mnt)], capture_output=True, text=True)
        else:
            require_tools("fusefat")
            r = subprocess.run(["fusefat", "-o", "rw+", str(self.img), str(self.mnt)],
                               capture_output=True, text=True)
        if r.returncode != 0 or not os.path.ismount(self.mnt):
            missing(f"cannot mount a vfat image: {r.stderr.strip()}")

    def unmount(self) -> None:
        for cmd in (["umount", str(self.mnt)], ["umount", "-l", str(self.mnt)]):
            if os.path.ismount(self.mnt):
                subprocess.run(cmd, check=False, capture_output=True)

    def remount(self) -> None:
        self.unmount()
        self.mount()


@pytest.fixture
def fat(tmp_path: Path) -> Iterator[Fat]:
    require_tools("mkfs.vfat", "mount", "umount")
    img, mnt = tmp_path / "fat.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(img)], check=True)
    subprocess.run(["mkfs.vfat", str(img)], check=True, capture_output=True)
    f = Fat(img, mnt)
    f.mount()
    try:
        f.vol.mkdir()
        yield f
    finally:
        f.unmount()


def put(path: Path, seed: bytes, mtime_ns: int = OLD) -> None:
    """A file of SIZE bytes written whole under a new name and renamed into place
    (FUSE's fusefat cannot rewrite a file in place), with an old mtime."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(hashlib.sha256(seed).digest() * (SIZE // 32) + b"\0" * (SIZE % 32))
    os.utime(tmp, ns=(mtime_ns, mtime_ns))
    os.replace(tmp, path)


def scan(fat: Fat, tmp_path: Path) -> dict[str, object]:
    return scan_json(fat.vol, db=f"sqlite:///{tmp_path}/index.db")


def groups(doc: dict[str, object]) -> set[frozenset[str]]:
    """The reported groups as path sets (inode numbers are no names here)."""
    found = doc["groups"]
    assert isinstance(found, list)
    return {frozenset(g["paths"]) for g in found}


def stats(doc: dict[str, object]) -> dict[str, int]:
    st = doc["stats"]
    assert isinstance(st, dict)
    return st


def test_rescan_reads_nothing_and_a_change_is_noticed(fat: Fat, tmp_path: Path) -> None:
    (fat.vol / "sub").mkdir()
    for name, seed in (("a", b"1"), ("b", b"2"), ("sub/c", b"1"), ("u", b"3")):
        put(fat.vol / name, seed)
    first = scan(fat, tmp_path)
    truth = {frozenset((str(fat.vol / "a"), str(fat.vol / "sub" / "c")))}
    assert groups(first) == truth and stats(first)["bytes_read"] > 0
    again = scan(fat, tmp_path)
    assert stats(again)["bytes_read"] == 0 and groups(again) == truth
    put(fat.vol / "u", b"2")  # same size, same mtime: other bytes
    changed = scan(fat, tmp_path)
    assert groups(changed) == truth | {frozenset((str(fat.vol / "b"), str(fat.vol / "u")))}
    assert stats(changed)["bytes_read"] > 0


def test_inode_numbers_handed_out_again_after_a_remount(fat: Fat, tmp_path: Path) -> None:
    for name, seed in (("a", b"1"), ("b", b"2"), ("c", b"1")):
        put(fat.vol / name, seed)
    truth = {frozenset((str(fat.vol / "a"), str(fat.vol / "c")))}
    assert groups(scan(fat, tmp_path)) == truth
    before = {n: (fat.vol / n).stat().st_ino for n in "abc"}
    fat.remount()
    for n in "bca":  # looked up in another order: numbers are made up in this order
        (fat.vol / n).stat()
    after = {n: (fat.vol / n).stat().st_ino for n in "abc"}
    assert after["b"] == before["a"], (before, after)  # b now carries a's old number
    again = scan(fat, tmp_path)
    assert groups(again) == truth, (before, after)


def test_a_plain_volume_is_refused_and_nothing_changes(fat: Fat, tmp_path: Path) -> None:
    for name, seed in (("a", b"1"), ("b", b"1")):
        put(fat.vol / name, seed)
    listing = {p.name: p.read_bytes() for p in fat.vol.iterdir()}
    conf = tmp_path / "dedupd.toml"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/run.db"\n'
                    f'[volumes.stick]\nkind = "plain"\npath = "{fat.vol}"\nmode = "apply"\n'
                    "min_size = 1\nsettle_seconds = 0\n")
    for argv in (["run", "--once", "--apply", "--json"], ["check-config"]):
        r = subprocess.run([str(EXE), *argv, "-c", str(conf)], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 78, (argv, r.stdout, r.stderr)
        assert "volumes.stick.kind" in r.stderr + r.stdout
        assert "no hard links" in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in fat.vol.iterdir()} == listing
    doc = json.loads(subprocess.run([str(EXE), "scan", "--json", "--db",
                                     f"sqlite:///{tmp_path}/scan.db", str(fat.vol)],
                                    capture_output=True, check=True).stdout)
    assert groups(doc) == {frozenset((str(fat.vol / "a"), str(fat.vol / "b")))}  # scan still works


def _consolidate(fat: Fat, tmp_path: Path) -> tuple[Path, dict[str, object]]:
    from dedupd.config import ConsolidateConfig
    from dedupd.consolidate.run import Options, consolidate
    from dedupd.index.store import Store

    src, archive = tmp_path / "src", fat.vol / "archive"
    archive.mkdir(exist_ok=True)
    for name, seed in (("a.bin", b"a"), ("b.bin", b"b"), ("c.bin", b"a")):
        src.mkdir(exist_ok=True)
        put(src / name, seed)
    store = Store(f"sqlite:///{tmp_path}/index.db")
    try:
        doc = consolidate(store, ConsolidateConfig("p", (src,), archive, layout="{name}"),
                          Options()).as_json()
    finally:
        store.close()
    return archive, doc


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_consolidation_into_an_archive_without_hard_links(fat: Fat, tmp_path: Path) -> None:
    """FAT has no hard links: each verified copy gets its name by a rename that
    never replaces a file (RENAME_NOREPLACE, else a check then the rename)."""
    archive, doc = _consolidate(fat, tmp_path)
    got = _contents(archive)
    got.pop(".dedupd-consolidate.lock")
    assert set(got.values()) == {(tmp_path / "src" / n).read_bytes() for n in ("a.bin", "b.bin")}
    assert not [n for n in got if "dedupd" in n], got  # no temp name left


def test_a_file_made_at_the_archive_name_during_the_copy_stays(fat: Fat, tmp_path: Path
                                                               ) -> None:
    from dedupd import testpoints

    mine = b"the user's own file" * 100

    def make(_point: str, path: bytes) -> None:
        if path.endswith(b"/archive/b.bin") and not os.path.lexists(path):
            Path(os.fsdecode(path)).write_bytes(mine)

    with testpoints.acting(("mutate",), make):
        archive, doc = _consolidate(fat, tmp_path)
    assert (archive / "b.bin").read_bytes() == mine, doc
    assert (tmp_path / "src" / "b.bin").exists()
