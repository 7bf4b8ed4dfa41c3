"""ZFS volumes as they run on OpenZFS: `zfs diff` from the OpenZFS emulator
(tests/fixtures/openzfs.py) over real zfs-fuse snapshots, hardlink dedupe for
real, several passes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dedupd.index.store import Store
from dedupd.volumes.zfs import PASS_PREFIX, pass_snapshots
from dedupd.volumes.zfs_mounts import dataset_for
from tests.fixtures.zfs import OpenZfs, Pool
from tests.integration.linktree import blob, config, content, dedupd, manifest, write

pytestmark = pytest.mark.integration

Row = tuple[int, int, int, int]  # ino, size, mtime_ns, ctime_ns


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True,
                          timeout=120).stdout


def tree(root: Path) -> dict[str, Row]:
    """What a fresh full walk finds: every regular file (min_size 1), by path."""
    out: dict[str, Row] = {}
    for dirpath, dirs, files in os.walk(root):
        if Path(dirpath) == root:
            dirs[:] = [d for d in dirs if d != ".zfs"]
        for n in files:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_size >= 1 and not n.startswith(".dedupd"):
                rel = os.path.relpath(os.path.join(dirpath, n), root)
                out[rel] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def index(db: Path, root: Path) -> dict[str, Row]:
    """The index: its paths with their inode's stat."""
    store = Store(f"sqlite:///{db}")
    try:
        rows = store.scan_paths()  # incremental passes touch only what changed
    finally:
        store.close()
    return {os.path.relpath(os.fsdecode(bytes(p)), root): (n, s, m, ct)
            for p, n, s, m, ct in rows}


def same_index(got: dict[str, Row], want: dict[str, Row], root: Path) -> bool:
    """got (the index after a pass) is what a full walk found when the pass began,
    except for ctimes that the pass's own links moved later (the index takes those)."""
    now = {row[0]: row[3] for row in tree(root).values()}
    return got.keys() == want.keys() and all(
        g == w or (g[:3] == w[:3] and g[3] == now.get(g[0])) for g, w in
        ((got[k], want[k]) for k in want))


def run_pass(cfg: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json")
                                     .stdout)["volumes"][0]
    return doc


@pytest.fixture
def volume(zpool: Callable[..., Pool], openzfs: OpenZfs, tmp_path: Path
           ) -> tuple[str, Path, Path]:
    pool = zpool("256M")
    ds = pool.dataset("data")
    zfs("create", ds)
    root = pool.mountpoint / "data"
    cfg = config(tmp_path, {"z": {"kind": "zfs", "path": str(root), "settle_seconds": 0,
                                  "min_size": 1, "mode": "apply",
                                  "zfs_full_walk_days": 365}})
    return ds, root, cfg


X, Y, Z = blob(1, 70_000), blob(2, 50_000), blob(3, 50_000)


def _changes(root: Path) -> list[Callable[[], None]]:
    """Pass by pass: what a user does between two passes."""
    def p2() -> None:
        write(root / "d4/c3 copy.bin", X)  # a third copy
        (root / "d5").mkdir()
        os.rename(root / "d3/c.bin", root / "d5/c-renamed.bin")

    def p3() -> None:
        write(root / "d6/x4.bin", X)  # a fourth copy
        (root / "d7").mkdir()
        os.link(root / "d5/c-renamed.bin", root / "d7/c-link.bin")  # a link elsewhere
        (root / "d1/a.bin").unlink()  # the name the first pass kept

    def p4() -> None:
        (root / "d8").mkdir()
        os.rename(root / "d2/b.bin", root / "d8/b-moved.bin")
        (root / "d7/c-link.bin").unlink()  # the link goes again
        write(root / "d9/x5.bin", X)
        write(root / "d5/c-renamed.bin", Z)  # rewritten in place

    def p5() -> None:
        (root / "d4/c3 copy.bin").unlink()  # the name the parent pointer points at
        write(root / "d1/again.bin", X)
        os.link(root / "d8/b-moved.bin", root / "d1/hard.bin")
        write(root / os.fsdecode(b"caf\xe9 \\ tab\t.bin"), Y)  # escaped by zfs diff

    return [p2, p3, p4, p5]


def test_index_equals_a_full_walk_after_every_diff_pass(volume: tuple[str, Path, Path],
                                                        tmp_path: Path) -> None:
    ds, root, cfg = volume
    assert dataset_for(root).dataset == ds
    write(root / "d1/a.bin", X)
    write(root / "d2/b.bin", X)
    write(root / "d3/c.bin", Y)
    db = tmp_path / "index.db"
    first = run_pass(cfg)
    assert first["counters"]["zfs_walk_no_base"] == 1
    assert (root / "d1/a.bin").stat().st_ino == (root / "d2/b.bin").stat().st_ino
    for n, change in enumerate(_changes(root), start=2):
        change()
        want, before = tree(root), content(manifest(root))
        doc = run_pass(cfg)
        assert doc["counters"].get("zfs_diff_entries", 0) > 0, (n, doc["counters"])
        assert "zfs_full_walks" not in doc["counters"], (n, doc["counters"])
        got = index(db, root)
        assert same_index(got, want, root), (n, got, want)
        assert content(manifest(root)) == before
        refused = [p for p in doc["problems"] if p["reason"] == "links_outside_scope"]
        assert refused == [], (n, refused)
        copies = [p for p, (_h, size, _m) in manifest(root).items() if size == len(X)]
        assert len({(root / p).stat().st_ino for p in copies}) == 1, (n, copies)
        assert len(pass_snapshots(ds)) == 1
    assert all(s.startswith(f"{ds}@{PASS_PREFIX}") for s in pass_snapshots(ds))


def test_diff_with_errors_on_stderr_is_not_trusted(volume: tuple[str, Path, Path],
                                                   openzfs: OpenZfs, tmp_path: Path) -> None:
    """`zfs diff` exits 0 after "Unable to determine path or stats for object N":
    the pass walks instead, and says so."""
    _ds, root, cfg = volume
    write(root / "a/x.bin", X)
    run_pass(cfg)
    write(root / "b/x.bin", X)
    (openzfs.state / "diff-stderr").write_text(
        "Unable to determine path or stats for object 9 in pool/data@snap: "
        "Invalid argument\n")
    want = tree(root)
    doc = run_pass(cfg)
    c = doc["counters"]
    assert c["skips_zfs_diff_incomplete"] == 1 and c["zfs_full_walks"] == 1, c
    assert [p["reason"] for p in doc["problems"]] == ["zfs_diff_incomplete"]
    assert "object 9" in doc["problems"][0]["detail"]
    assert same_index(index(tmp_path / "index.db", root), want, root)
    assert (root / "a/x.bin").stat().st_ino == (root / "b/x.bin").stat().st_ino


def test_dot_zfs_at_the_dataset_root_is_never_walked(volume: tuple[str, Path, Path],
                                                     tmp_path: Path) -> None:
    """With snapdir=visible, <mountpoint>/.zfs/snapshot/* holds a copy of the tree
    per snapshot. (zfs-fuse has no .zfs: a plain directory stands in for it.)"""
    _ds, root, cfg = volume
    write(root / "a/x.bin", X)
    write(root / ".zfs/snapshot/old/a/x.bin", X)
    write(root / "sub/.zfs/x.bin", X)  # not at a dataset root: an ordinary name
    run_pass(cfg)
    walked = index(tmp_path / "index.db", root)
    assert sorted(walked) == ["a/x.bin", "sub/.zfs/x.bin"]
    ino = (root / "a/x.bin").stat().st_ino
    assert (root / "sub/.zfs/x.bin").stat().st_ino == ino
    assert (root / ".zfs/snapshot/old/a/x.bin").stat().st_ino != ino
    write(root / "c/x.bin", X)
    doc = run_pass(cfg)  # the diff pass, which re-lists the root
    assert doc["counters"]["zfs_diff_entries"] > 0
    assert sorted(index(tmp_path / "index.db", root)) == ["a/x.bin", "c/x.bin",
                                                          "sub/.zfs/x.bin"]


def test_scheduled_full_walk_catches_what_the_diff_omits(volume: tuple[str, Path, Path],
                                                         tmp_path: Path) -> None:
    """A file whose parent pointer names a removed link: OpenZFS cannot name it on
    either side, so `zfs diff` omits its later changes (OpenZFS #13283). The
    walk due after zfs_full_walk_days puts the index right."""
    _ds, root, cfg = volume
    write(root / "d1/f.bin", Y)
    (root / "d2").mkdir()
    os.link(root / "d1/f.bin", root / "d2/g.bin")  # parent pointer -> d2
    (root / "d2/g.bin").unlink()  # ... now stale
    run_pass(cfg)
    write(root / "d1/f.bin", Z)  # rewritten in place: same inode
    # zfs-fuse keeps whole seconds: a rewrite in the same second looks unchanged
    st = (root / "d1/f.bin").stat()
    os.utime(root / "d1/f.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    want = tree(root)
    doc = run_pass(cfg)
    assert "zfs_full_walks" not in doc["counters"]
    assert index(tmp_path / "index.db", root) != want  # what OpenZFS's diff gives
    cfg = config(tmp_path, {"z": {"kind": "zfs", "path": str(root), "settle_seconds": 0,
                                  "min_size": 1, "mode": "apply", "zfs_full_walk_days": 0}})
    doc = run_pass(cfg)
    assert doc["counters"]["zfs_walk_scheduled"] == 1 and doc["counters"]["zfs_full_walks"] == 1
    assert same_index(index(tmp_path / "index.db", root), want, root)


def test_cross_mounts_covers_child_datasets(zpool: Callable[..., Pool], openzfs: OpenZfs,
                                            tmp_path: Path) -> None:
    """`zfs diff` sees one dataset: with cross_mounts and a child dataset below the
    path, every pass walks (the child's changes are found too)."""
    pool = zpool("256M")
    zfs("create", pool.dataset("top"))
    zfs("create", pool.dataset("top/child"))
    root = pool.mountpoint / "top"
    cfg = config(tmp_path, {"z": {"kind": "zfs", "path": str(root), "settle_seconds": 0,
                                  "min_size": 1, "mode": "apply", "cross_mounts": True,
                                  "zfs_full_walk_days": 365}})
    write(root / "child/a.bin", X)
    run_pass(cfg)
    write(root / "child/b.bin", X)  # a change only the child's diff would show
    doc = run_pass(cfg)
    assert doc["counters"]["zfs_walk_child_mounts"] == 1
    assert (root / "child/a.bin").stat().st_ino == (root / "child/b.bin").stat().st_ino
    assert pass_snapshots(pool.dataset("top")) == []  # nothing pinned when never diffed


def test_the_emulator_passes_openzfs_own_zfs_diff_checks(zpool: Callable[..., Pool],
                                                         openzfs: OpenZfs) -> None:
    """OpenZFS's tests/zfs-tests/.../cli_root/zfs_diff/zfs_diff_changes.ksh and
    zfs_diff_mangle.ksh, replayed against the emulator (between two snapshots:
    the emulator diffs snapshots only)."""
    pool = zpool("256M")
    ds = pool.dataset("fs")
    zfs("create", ds)
    mnt = pool.mountpoint / "fs"
    for f in ("fremoved", "frenamed", "fmodified"):
        (mnt / f).touch()
    for d in ("dremoved", "drenamed", "dmodified"):
        (mnt / d).mkdir()
    zfs("snapshot", f"{ds}@snap1")
    time.sleep(1.1)  # zfs-fuse times have whole seconds; `touch` must move them
    (mnt / "fremoved").unlink()
    os.rename(mnt / "frenamed", mnt / "frenamed.new")
    (mnt / "fmodified").touch()
    (mnt / "dremoved").rmdir()
    os.rename(mnt / "drenamed", mnt / "drenamed.new")
    (mnt / "dmodified/file").touch()
    (mnt / "fcreated").touch()
    (mnt / "dcreated").mkdir()
    for name in ("śmieszny żupan", "достопримечательности"):
        (mnt / name).touch()
    zfs("snapshot", f"{ds}@snap2")
    out = zfs("diff", "-F", f"{ds}@snap1", f"{ds}@snap2")
    change = {ln.split()[-1]: ln.split()[0] for ln in out.splitlines()}
    for path, want in [("fremoved", "-"), ("frenamed.new", "R"), ("fmodified", "M"),
                       ("fcreated", "+"), ("dremoved", "-"), ("drenamed.new", "R"),
                       ("dmodified", "M"), ("dcreated", "+")]:
        assert change.get(f"{mnt}/{path}") == want, (path, out)
    mangled = ("\\0305\\0233mieszny\\0040\\0305\\0274upan", "\\0320\\0264\\0320\\0276"
               "\\0321\\0201\\0321\\0202\\0320\\0276\\0320\\0277\\0321\\0200\\0320\\0270"
               "\\0320\\0274\\0320\\0265\\0321\\0207\\0320\\0260\\0321\\0202\\0320\\0265"
               "\\0320\\0273\\0321\\0214\\0320\\0275\\0320\\0276\\0321\\0201\\0321\\0202"
               "\\0320\\0270")
    lines = out.splitlines()
    assert f"M\t/\t{mnt}/" in lines
    assert all(f"+\tF\t{mnt}/{m}" in lines for m in mangled), out
    plain = zfs("diff", "-h", f"{ds}@snap1", f"{ds}@snap2").splitlines()
    assert f"+\t{mnt}/śmieszny żupan" in plain and f"+\t{mnt}/достопримечательности" in plain
