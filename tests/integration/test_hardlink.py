"""Hardlink dedupe on real filesystems (ext4 loop mount, tmpfs): the safety contract."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd.dedup.hardlink import LinkPolicy, LinkResult, link_group
from dedupd.dedup.journal import Journal
from dedupd.index.store import Store
from dedupd.scan.scanner import DupGroup, ScanOptions, scan
from tests.integration.linktree import blob, config, content, dedupd, inodes, manifest, write

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def free_bytes(p: Path) -> int:
    os.sync()
    st = os.statvfs(p)
    return st.f_bfree * st.f_frsize


def plain_cfg(tmp: Path, root: Path, **keys: object) -> Path:
    return config(tmp, {"v": {"kind": "plain", "path": str(root), "settle_seconds": 0,
                              "min_size": 1, **keys}})


def test_apply_links_duplicates_and_frees_space(loopfs: Callable[..., Path],
                                                tmp_path: Path) -> None:
    root = loopfs("ext4", "256M") / "vol"
    write(root / "a/one.bin", blob(1, MiB))
    os.link(root / "a/one.bin", root / "a/one-link.bin")  # the inode with most links
    write(root / "b/one.bin", blob(1, MiB))
    write(root / "c/deep/one copy.bin", blob(1, MiB))
    write(root / "a/two.bin", blob(2, MiB // 2))
    write(root / "b/two.bin", blob(2, MiB // 2))
    write(root / "unique.bin", blob(3, MiB))
    before, free0 = manifest(root), free_bytes(root)
    kept = (root / "a/one.bin").stat().st_ino
    cfg = plain_cfg(tmp_path, root, mode="apply")
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert content(manifest(root)) == content(before)
    ino = inodes(root)
    assert {ino["b/one.bin"], ino["c/deep/one copy.bin"], ino["a/one-link.bin"]} == {kept}
    assert ino["a/two.bin"] == ino["b/two.bin"]
    assert ino["unique.bin"] != kept
    expected = 2 * MiB + MiB // 2
    assert doc["bytes_reclaimed"] == expected
    assert free_bytes(root) - free0 >= expected * 0.95
    assert [a["result"] for a in doc["actions"] if a["action"] == "hardlink"] == ["done"] * 3
    again = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert [a for a in again["actions"] if a["action"] == "hardlink"] == []
    ops = json.loads(dedupd("journal", "-c", str(cfg), "--json").stdout)["operations"]
    assert [o["state"] for o in ops] == ["DONE"] * 3


@pytest.mark.parametrize("how", ["config-default", "--dry-run"])
def test_dry_run_changes_nothing(tmpfs: Callable[..., Path], tmp_path: Path, how: str) -> None:
    root = tmpfs() / "vol"
    for i, d in enumerate(["a", "b", "c"]):
        write(root / d / "same.bin", blob(7, 100_000))
        write(root / d / f"other{i}.bin", blob(10 + i, 100_000))
    before, ino0 = manifest(root), inodes(root)
    if how == "--dry-run":
        cfg = plain_cfg(tmp_path, root, mode="apply")
        out = dedupd("run", "--once", "--dry-run", "-c", str(cfg), "--json").stdout
    else:
        cfg = plain_cfg(tmp_path, root)  # plain volumes default to mode = "dry-run"
        out = dedupd("run", "--once", "-c", str(cfg), "--json").stdout
    doc = json.loads(out)["volumes"][0]
    assert manifest(root) == before  # bytes and mtimes
    assert inodes(root) == ino0
    assert doc["dry_run"] is True
    would = [a for a in doc["actions"] if a["action"] == "hardlink"]
    assert sorted(a["replace"] for a in would) == [str(root / "b/same.bin"),
                                                    str(root / "c/same.bin")]
    assert {a["result"] for a in would} == {"would"}
    text = dedupd("run", "--once", "--dry-run", "-c", str(cfg)).stdout
    assert f"would hardlink: {root / 'b/same.bin'} becomes a link to {root / 'a/same.bin'}" \
        in text
    assert json.loads(dedupd("journal", "-c", str(cfg), "--json").stdout)["operations"] == []


def only_group(store: Store, *roots: Path) -> DupGroup:
    groups = scan(store, [str(r) for r in roots], ScanOptions()).groups
    assert len(groups) == 1
    return groups[0]


def link(store: Store, g: DupGroup, *roots: Path, **pol: object):  # type: ignore[no-untyped-def]
    jr = Journal(store)
    try:
        return link_group(jr, g, LinkPolicy("v", tuple(os.fsencode(r) for r in roots),
                                            **pol), dry_run=False)  # type: ignore[arg-type]
    finally:
        jr.close()


def _chown(p: Path) -> None:
    os.chown(p, 1000, -1)


def _chgrp(p: Path) -> None:
    os.chown(p, -1, 1000)


def _chmod(p: Path) -> None:
    p.chmod(0o600)


def _xattr(p: Path) -> None:
    os.setxattr(p, "user.origin", b"camera")


def _acl(p: Path) -> None:
    subprocess.run(["setfacl", "-m", "u:1000:r", str(p)], check=True)


@pytest.mark.parametrize("change,reason", [
    (_chown, "owner_differs"), (_chgrp, "group_differs"), (_chmod, "mode_differs"),
    (_xattr, "xattr_differs"), (_acl, "acl_differs")])
def test_metadata_difference_refused(link_tree: tuple[Path, Store], change: Callable[[Path], None],
                                     reason: str) -> None:
    root, store = link_tree
    write(root / "a.bin", blob(1, 50_000))
    change(write(root / "b.bin", blob(1, 50_000)))
    before, ino0 = manifest(root), inodes(root)
    res = link(store, only_group(store, root), root)
    assert res.linked == 0 and dict(res.counts) == {reason: 1}
    assert manifest(root) == before and inodes(root) == ino0


def test_links_outside_scope_refused(tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    fs_root = tmpfs()
    root = fs_root / "vol"
    write(root / "a.bin", blob(1, 50_000))
    write(root / "b.bin", blob(1, 50_000))
    (fs_root / "outside").mkdir()
    os.link(root / "b.bin", fs_root / "outside/b-link")
    store = Store(f"sqlite:///{tmp_path}/index.db")
    res = link(store, only_group(store, root), root)
    assert res.linked == 0 and dict(res.counts) == {"links_outside_scope": 1}
    assert (root / "a.bin").stat().st_ino != (root / "b.bin").stat().st_ino
    store.close()


def test_open_for_write_refused(link_tree: tuple[Path, Store]) -> None:
    root, store = link_tree
    write(root / "a.bin", blob(1, 50_000))
    write(root / "b.bin", blob(1, 50_000))
    g = only_group(store, root)
    with open(root / "b.bin", "ab"):
        res = link(store, g, root)
    assert res.linked == 0 and dict(res.counts) == {"open_for_write": 1}
    assert "open for writing" in res.refused[0]["detail"]


def test_different_filesystems_refused(tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    r1, r2 = tmpfs() / "v", tmpfs() / "v"
    write(r1 / "a.bin", blob(1, 50_000))
    write(r2 / "b.bin", blob(1, 50_000))
    store = Store(f"sqlite:///{tmp_path}/index.db")
    res = link(store, only_group(store, r1, r2), r1, r2)
    assert res.linked == 0 and dict(res.counts) == {"different_fs": 1}
    store.close()


def test_readonly_kept_location_refused(link_tree: tuple[Path, Store], tmp_path: Path) -> None:
    root, store = link_tree
    write(root / "ro/a.bin", blob(1, 50_000))
    write(root / "rw/b.bin", blob(1, 50_000))
    ro = tmp_path / "ro-view"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(root / "ro"), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        g = only_group(store, ro, root / "rw")
        res = link(store, g, ro, root / "rw", primary_paths=(os.fsencode(ro),))
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert res.linked == 0 and dict(res.counts) == {"keep_readonly": 1}


def test_forced_hash_collision_is_never_linked(link_tree: tuple[Path, Store]) -> None:
    """Test hook: hand the linker a group whose hashes 'collide' but bytes differ."""
    root, store = link_tree
    a = write(root / "a.bin", blob(1, 80_000))
    b = write(root / "b.bin", blob(1, 80_000)[:-1] + b"!")  # last byte differs
    rep = scan(store, [str(root)], ScanOptions())
    assert rep.groups == ()
    files = [f for grp in store.files_of_sizes(rep.scan_id, [80_000]) for f in grp]
    res = link(store, DupGroup(80_000, tuple(files)), root)
    assert res.linked == 0 and dict(res.counts) == {"content_differs": 1}
    assert a.read_bytes() == blob(1, 80_000) and b.read_bytes().endswith(b"!")
    ops = Journal(store).history()
    assert [o.state for o in ops] == ["REFUSED"]


def test_forced_collision_inside_a_larger_group(link_tree: tuple[Path, Store]) -> None:
    """The kept file is read once for all its duplicates (verify.compare_group): each
    one that differs (first block, last block) is refused, the equal ones linked."""
    root, store = link_tree
    size = 300_000  # several compare reads
    data = blob(4, size)
    write(root / "a.bin", data)
    write(root / "b.bin", data)
    write(root / "c.bin", data[:-1] + b"!")
    write(root / "d.bin", b"!" + data[1:])
    write(root / "e.bin", data)
    rep = scan(store, [str(root)], ScanOptions())
    files = [f for grp in store.files_of_sizes(rep.scan_id, [size]) for f in grp]
    assert len(files) == 5
    res = link(store, DupGroup(size, tuple(files)), root)
    assert res.linked == 2 and dict(res.counts) == {"content_differs": 2}
    ino = inodes(root)
    assert ino["b.bin"] == ino["a.bin"] == ino["e.bin"]
    assert len({ino["a.bin"], ino["c.bin"], ino["d.bin"]}) == 3
    assert (root / "c.bin").read_bytes().endswith(b"!")
    assert (root / "d.bin").read_bytes().startswith(b"!")


def test_forced_collision_through_the_index(tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    """The CLI pass trusts stored hashes for unchanged files: forge equal ones."""
    root = tmpfs() / "vol"
    write(root / "a.bin", blob(1, 80_000))
    write(root / "b.bin", blob(2, 80_000))
    cfg = plain_cfg(tmp_path, root, mode="apply")
    dedupd("run", "--once", "-c", str(cfg))
    with sqlite3.connect(tmp_path / "index.db") as db:
        n = db.execute("UPDATE inodes SET head = 42, full = ?", (b"\x01" * 16,)).rowcount
    assert n == 2
    before = manifest(root)
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert doc["counters"]["skips_content_differs"] == 1
    assert manifest(root) == before
    assert len(set(inodes(root).values())) == 2


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_writer_between_hashing_and_linking(link_tree: tuple[Path, Store],
                                            keep_mtime: bool) -> None:
    root, store = link_tree
    write(root / "a.bin", blob(1, 60_000))
    b = write(root / "b.bin", blob(1, 60_000))
    g = only_group(store, root)
    st = b.stat()
    with open(b, "r+b") as f:  # same size, new bytes
        f.seek(100)
        f.write(b"edited by a user")
    if keep_mtime:  # a writer that hides its change from mtime: ctime still moves
        os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = link(store, g, root)
    assert res.linked == 0 and dict(res.counts) == {"changed": 1}
    assert b"edited by a user" in b.read_bytes()
    assert (root / "a.bin").read_bytes() == blob(1, 60_000)


def _link_editing(store: Store, root: Path, groups: list[DupGroup], edited: Path,
                  offset: int) -> tuple[LinkResult, dict[bytes, str]]:
    """link_groups while a user writes into `edited` (same size, new bytes at offset)
    once the batch's PENDING rows are committed: the result and each name's state."""
    from dedupd import testpoints
    from dedupd.dedup.hardlink import link_groups

    def edit(_point: str, _path: bytes) -> None:
        with open(edited, "r+b") as f:
            f.seek(offset)
            f.write(b"edited by a user")

    jr = Journal(store)
    try:
        with testpoints.acting(("batch",), edit):
            res = link_groups(jr, groups, LinkPolicy("v", (bytes(root),)))
        return res, {os.path.basename(r.spec.dup_path): r.state for r in jr.history("v")}
    finally:
        jr.close()


def test_writer_after_the_batch_is_journalled_is_refused(link_tree: tuple[Path, Store]) -> None:
    # Group commit: three groups go into one batch; a user edits one duplicate after
    # the batch's PENDING rows are committed and before its name is verified.
    root, store = link_tree
    for i in range(3):
        write(root / f"a{i}.bin", blob(10 + i, 60_000))
        write(root / f"b{i}.bin", blob(10 + i, 60_000))
    groups = scan(store, [str(root)], ScanOptions()).groups
    assert len(groups) == 3
    edited = root / "b1.bin"
    res, states = _link_editing(store, root, groups, edited, 100)
    assert res.linked == 2 and dict(res.counts) == {"changed": 1}
    assert b"edited by a user" in edited.read_bytes()
    ino = inodes(root)
    assert ino["b0.bin"] == ino["a0.bin"] and ino["b2.bin"] == ino["a2.bin"]
    assert ino["b1.bin"] != ino["a1.bin"]
    assert states == {b"b0.bin": "DONE", b"b1.bin": "REFUSED", b"b2.bin": "DONE"}


def test_writer_inside_a_group_after_the_batch_is_journalled(link_tree: tuple[Path, Store]) -> None:
    # One group of four copies: a user edits one duplicate after the batch's PENDING
    # rows are committed; the compare of the whole group refuses that one only.
    root, store = link_tree
    for name in ("a", "b", "c", "d"):
        write(root / f"{name}.bin", blob(20, 200_000))
    g = only_group(store, root)
    edited = root / "c.bin"
    res, states = _link_editing(store, root, [g], edited, 150_000)
    assert res.linked == 2 and dict(res.counts) == {"changed": 1}
    assert b"edited by a user" in edited.read_bytes()
    ino = inodes(root)
    assert ino["a.bin"] == ino["b.bin"] == ino["d.bin"] != ino["c.bin"]
    assert states == {b"b.bin": "DONE", b"c.bin": "REFUSED", b"d.bin": "DONE"}


def test_primary_paths_decide_the_kept_copy(link_tree: tuple[Path, Store]) -> None:
    root, store = link_tree
    write(root / "archive/p.bin", blob(1, 50_000))
    x = write(root / "inbox/x.bin", blob(1, 50_000))
    os.link(x, root / "inbox/x2.bin")  # more links, but not primary
    res = link(store, only_group(store, root), root,
               primary_paths=(os.fsencode(root / "archive"),))
    assert res.linked == 2
    keep = (root / "archive/p.bin").stat().st_ino
    assert {p.stat().st_ino for p in (root / "inbox").iterdir()} == {keep}


def test_quarantine_keeps_replaced_copy_then_expires(tmpfs: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    root = tmpfs() / "vol"
    write(root / "a.bin", blob(1, 50_000))
    write(root / "b.bin", blob(1, 50_000))
    q = root / ".q"
    cfg = plain_cfg(tmp_path, root, mode="apply", quarantine_dir=str(q), quarantine_days=1)
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert doc["counters"]["hits"] == 1
    assert (root / "a.bin").stat().st_ino == (root / "b.bin").stat().st_ino
    kept = list(q.iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == blob(1, 50_000)
    again = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert again["counters"].get("hits", 0) == 0 and len(list(q.iterdir())) == 1
    cfg = plain_cfg(tmp_path, root, mode="apply", quarantine_dir=str(q), quarantine_days=0)
    last = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert last["counters"]["quarantine_purged"] == 1 and list(q.iterdir()) == []


def test_proc_scan_finds_a_writer_in_another_process(tmp_path: Path) -> None:
    """The fallback where leases are unsupported: /proc/*/fd of other processes."""
    from dedupd.dedup.writers import lease_writer, open_for_write

    f = write(tmp_path / "busy.bin", b"x" * 10)
    p = subprocess.Popen(["python3", "-c", "import sys,time; f=open(sys.argv[1],'ab'); "
                          "print('ready', flush=True); time.sleep(30)", str(f)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        st = f.stat()
        assert open_for_write().get((st.st_dev, st.st_ino)) == p.pid
        assert lease_writer(os.fsencode(f)) is True
    finally:
        p.kill()
        p.wait()
    assert lease_writer(os.fsencode(f)) is False


def test_journal_on_postgresql(tmpfs: Callable[..., Path], pg_url: str) -> None:
    """The shared-inventory backend keeps the journal too."""
    root = tmpfs() / "vol"
    write(root / "a.bin", blob(1, 50_000))
    write(root / "b.bin", blob(1, 50_000))
    store = Store(pg_url)
    try:
        res = link(store, only_group(store, root), root)
        assert res.linked == 1
        jr = Journal(store)
        assert [(o.state, o.spec.dup_path) for o in jr.history()] == [
            ("DONE", os.fsencode(root / "b.bin"))]
        assert jr.unfinished() == []
    finally:
        store.close()
    assert (root / "a.bin").stat().st_ino == (root / "b.bin").stat().st_ino


def test_second_process_on_a_busy_volume_exits_75(tmpfs: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    from dedupd.dedup.lock import volume_lock

    root = tmpfs() / "vol"
    write(root / "a.bin", blob(1, 50_000))
    write(root / "b.bin", blob(1, 50_000))
    cfg = plain_cfg(tmp_path, root, mode="apply")
    with volume_lock(os.fsencode(root)):
        r = dedupd("run", "--once", "-c", str(cfg), check=False)
    assert r.returncode == 75 and "another dedupd" in r.stderr
    assert (root / "a.bin").stat().st_ino != (root / "b.bin").stat().st_ino
    dedupd("run", "--once", "-c", str(cfg))
    assert (root / "a.bin").stat().st_ino == (root / "b.bin").stat().st_ino


@pytest.mark.parametrize("pairs", [False, True])
def test_two_primary_copies_left_alone_unless_configured(link_tree: tuple[Path, Store],
                                                         pairs: bool) -> None:
    root, store = link_tree
    write(root / "p1/a.bin", blob(1, 50_000))
    write(root / "p2/a.bin", blob(1, 50_000))
    write(root / "other/a.bin", blob(1, 50_000))
    prim = (os.fsencode(root / "p1"), os.fsencode(root / "p2"))
    res = link(store, only_group(store, root), root, primary_paths=prim,
               link_primary_pairs=pairs)
    ino = inodes(root)
    assert ino["other/a.bin"] == ino["p1/a.bin"]
    if pairs:
        assert res.linked == 2 and ino["p2/a.bin"] == ino["p1/a.bin"]
    else:
        assert res.linked == 1 and dict(res.counts) == {"primary_pair": 1}
        assert ino["p2/a.bin"] != ino["p1/a.bin"]


def test_odd_names_are_linked_and_reported(tmpfs: Callable[..., Path], tmp_path: Path) -> None:
    """Names that are not UTF-8, or hold newlines and backslashes, are just bytes."""
    root = tmpfs() / "vol"
    root.mkdir()
    names = [b"caf\xe9.bin", b"line\nbreak.bin", b"back\\slash \t.bin"]
    for n in names:
        with open(os.path.join(os.fsencode(root), n), "wb") as f:
            f.write(blob(5, 30_000))
    before = manifest(root)
    cfg = plain_cfg(tmp_path, root, mode="apply")
    doc = json.loads(dedupd("run", "--once", "-c", str(cfg), "--json").stdout)["volumes"][0]
    assert manifest(root).keys() == before.keys() and content(manifest(root)) == content(before)
    assert len({os.lstat(os.path.join(os.fsencode(root), n)).st_ino for n in names}) == 1
    replaced = {os.fsencode(a["replace"]) for a in doc["actions"] if a["action"] == "hardlink"}
    assert len(replaced) == 2 and replaced <= {os.path.join(os.fsencode(root), n) for n in names}
    ops = json.loads(dedupd("journal", "-c", str(cfg), "--json").stdout)["operations"]
    assert {os.fsencode(o["replace"]) for o in ops} == replaced
