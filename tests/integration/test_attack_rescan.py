"""Rescans that skip a directory whose listing digest did not change (scan/walk.py
`walk_listed`): changes that could slip past the digest. After every rescan the
reported duplicate groups equal the truth on the disk, and every indexed file's
stat and full hash are the disk's (a stale row would later group files wrongly)."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash

from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan

pytestmark = pytest.mark.integration

SIZE = 40_000
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): the two names swap inodes atomically."""
    r = _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def blob(c: str) -> bytes:
    return c.encode() * SIZE


def put(p: Path, data: bytes, mtime_ns: int = 1_500_000_000 * 10**9) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, ns=(mtime_ns, mtime_ns))  # equal mtimes: only ctime and inode tell apart
    return p


def run_scan(root: Path, db: Path) -> ScanReport:
    store = Store(f"sqlite:///{db}")
    try:
        return scan(store, [str(root)], ScanOptions())
    finally:
        store.close()


def truth(root: Path) -> set[frozenset[bytes]]:
    """Sets of paths holding one content, for contents held by 2+ inodes."""
    by: dict[bytes, dict[int, list[bytes]]] = {}
    for d, _dirs, files in os.walk(os.fsencode(root)):
        for n in files:
            p = os.path.join(d, n)
            if os.path.islink(p):
                continue
            data = Path(os.fsdecode(p)).read_bytes()
            by.setdefault(data, {}).setdefault(os.lstat(p).st_ino, []).append(p)
    return {frozenset(p for ps in inos.values() for p in ps)
            for inos in by.values() if len(inos) > 1}


def reported(rep: ScanReport) -> set[frozenset[bytes]]:
    return {frozenset(p for f in g.files for p in f.paths) for g in rep.groups}


def check_index(root: Path, db: Path, rep: ScanReport) -> None:
    """Every inode the index has under root, with the scan's names, is the disk's."""
    store = Store(f"sqlite:///{db}")
    try:
        sizes = sorted({os.lstat(os.path.join(d, n)).st_size
                        for d, _x, fs in os.walk(root) for n in fs})
        for grp in store.files_of_sizes(rep.scan_id, sizes):
            for f in grp:
                for p in f.paths:
                    st = os.lstat(p)
                    assert (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == \
                        (f.ino, f.size, f.mtime_ns, f.ctime_ns), p
                    if f.full is not None:
                        data = Path(os.fsdecode(p)).read_bytes()
                        assert f.full == xxhash.xxh3_128_digest(data), p
    finally:
        store.close()


def check(root: Path, db: Path) -> ScanReport:
    rep = run_scan(root, db)
    assert reported(rep) == truth(root)
    check_index(root, db, rep)
    return rep


def names_exchanged(root: Path) -> None:
    exchange(root / "d" / "a", root / "d" / "b")


def dirs_exchanged(root: Path) -> None:
    exchange(root / "d", root / "e")


def replaced_keeping_inode_number(root: Path) -> None:
    """b (Y) removed; a new file of other bytes and the same size, mtime and name
    created, on ext4 usually in b's freed inode number."""
    b = root / "d" / "b"
    old = b.lstat()
    b.unlink()
    put(b, blob("q"), old.st_mtime_ns)
    assert b.lstat().st_ino == old.st_ino  # ext4 hands the freed number out again


def link_count_changed(root: Path) -> None:
    os.link(root / "d" / "a", root / "e" / "a-link")


def moved_away_and_back(root: Path) -> None:
    """d leaves the tree for one scan, then comes back unchanged."""
    os.rename(root / "d", root.parent / "d-away")


def back(root: Path) -> None:
    os.rename(root.parent / "d-away", root / "d")


SCENARIOS: dict[str, tuple[Callable[[Path], None], Callable[[Path], None] | None]] = {
    "names_exchanged": (names_exchanged, None),
    "dirs_exchanged": (dirs_exchanged, None),
    "replaced_keeping_inode_number": (replaced_keeping_inode_number, None),
    "link_count_changed": (link_count_changed, None),
    "moved_away_and_back": (moved_away_and_back, back),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rescan_sees_every_change(tmp_path: Path, loopfs: Callable[[str, str], Path],
                                  scenario: str) -> None:
    # a private ext4: on a shared filesystem another process may take b's freed
    # inode number before the scenario creates the new b
    root, db = loopfs("ext4", "64M") / "t", tmp_path / "db"
    # d and e list alike (names, sizes, mtimes); contents differ between them
    put(root / "d" / "a", blob("x"))
    put(root / "d" / "b", blob("y"))
    put(root / "d" / "c", blob("x"))
    put(root / "e" / "a", blob("y"))
    put(root / "e" / "b", blob("z"))
    put(root / "e" / "c", blob("x"))
    check(root, db)
    step, then = SCENARIOS[scenario]
    step(root)
    check(root, db)
    if then is not None:
        then(root)
        check(root, db)
    rep = check(root, db)  # and once more: nothing read, nothing lost
    assert rep.stats["bytes_read"] == 0


def test_rescan_after_a_mount_over_a_directory_came_and_went(tmp_path: Path) -> None:
    """A filesystem mounted over d hides d's files for one scan (a mount point is
    not crossed); unmounted, d lists exactly as before: its files must come back."""
    root, db = tmp_path / "t", tmp_path / "db"
    put(root / "d" / "a", blob("x"))
    put(root / "d" / "b", blob("y"))
    put(root / "e" / "a", blob("x"))
    put(root / "e" / "b", blob("y"))
    check(root, db)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root / "d")],
                   check=True)
    try:
        check(root, db)
    finally:
        subprocess.run(["umount", str(root / "d")], check=True)
    check(root, db)


def test_a_file_rewritten_in_place_under_old_mtimes_is_read_again(tmp_path: Path) -> None:
    """`dedupd scan` (its walk forked before it reads the index): a file rewritten in
    place with other bytes of the same size, its mtime and its directory's put back
    as they were, lists alike but for its ctime. The rescan reads it again and
    reports the disk; the next one reads nothing."""
    root, db = tmp_path / "t", f"sqlite:///{tmp_path / 'db'}"
    for d in ("d", "e"):
        put(root / d / "a", blob("x"))
        put(root / d / "b", blob("y"))

    def cli_scan() -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-m", "dedupd", "scan", "--json", "--db", db,
                            str(root)], capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    def groups(doc: dict[str, Any]) -> set[frozenset[str]]:
        return {frozenset(g["paths"]) for g in doc["groups"]}

    assert groups(cli_scan()) == {frozenset({str(root / "d" / "a"), str(root / "e" / "a")}),
                                  frozenset({str(root / "d" / "b"), str(root / "e" / "b")})}
    assert cli_scan()["stats"]["files_unchanged"] == 4
    f, d = root / "e" / "b", root / "e"
    fst, dst = f.lstat(), d.lstat()
    with open(f, "r+b") as out:  # in place: same inode, same size
        out.write(blob("x"))
    os.utime(f, ns=(fst.st_atime_ns, fst.st_mtime_ns))
    os.utime(d, ns=(dst.st_atime_ns, dst.st_mtime_ns))
    now = f.lstat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (fst.st_ino, fst.st_size,
                                                          fst.st_mtime_ns)
    assert d.lstat().st_mtime_ns == dst.st_mtime_ns
    again = cli_scan()
    assert groups(again) == {frozenset({str(root / "d" / "a"), str(root / "e" / "a"),
                                        str(f)})}
    assert again["stats"]["files_changed"] == 1 and again["stats"]["bytes_read"] >= SIZE
    assert truth(root) == {frozenset(os.fsencode(p) for p in g) for g in groups(again)}
    last = cli_scan()
    assert groups(last) == groups(again) and last["stats"]["bytes_read"] == 0
