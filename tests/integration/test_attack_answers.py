"""Attacks on the kept answer of an unchanged rescan (dedupd/index/answers.py): a
user's sequence of scans with other roots or options between two scans of one tree,
after which the tree lists exactly as it did, must never have the next scan report
anything but the tree's files under their current names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dedupd import testpoints
from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan
from tests.integration.test_vfat import Fat, fat  # noqa: F401
from tests.integration.test_vfat import put as fat_put

SIZE = 9000


def put(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def run(db: Path, root: Path, **opts: object) -> ScanReport:
    store = Store(f"sqlite:///{db}")
    try:
        return scan(store, [str(root)], ScanOptions(**opts))  # type: ignore[arg-type]
    finally:
        store.close()


def _r_and_o(tmp_path: Path) -> tuple[Path, Path, Path, set[frozenset[bytes]]]:
    """The index's path, a tree r with one group of three (f1 and, in r/z, f2 and
    f3), another tree o, and r's groups."""
    db, r, o = tmp_path / "i.db", tmp_path / "r", tmp_path / "o"
    put(r / "f1", b"a" * SIZE)
    put(r / "z" / "f2", b"a" * SIZE)
    put(r / "z" / "f3", b"a" * SIZE)
    put(o / "g", b"g" * SIZE)
    return db, r, o, {frozenset({bytes(r / "f1"), bytes(r / "z" / "f2"),
                                 bytes(r / "z" / "f3")})}


def names(rep: ScanReport) -> set[frozenset[bytes]]:
    return {frozenset(p for f in g.files for p in f.paths) for g in rep.groups}


def test_a_directory_id_given_to_another_path_is_never_reported(tmp_path: Path) -> None:
    """A directory row of the kept answer goes (a scan of it with an exclude that
    leaves it no name), SQLite gives its id to the next directory made (another
    tree), and the directory comes back under a new id (a scan of it alone): the
    tree lists as it did, every directory is skipped, but the answer's names must
    not be read through the reused id (they were: the other tree's path)."""
    db, r, o, want = _r_and_o(tmp_path)
    assert names(run(db, r)) == want  # kept: r/z is the newest directory row
    assert names(run(db, r / "z", exclude=("f*",))) == set()  # r/z has no name: dropped
    run(db, o)  # o takes r/z's old id
    assert names(run(db, r / "z")) == {frozenset({bytes(r / "z" / "f2"),
                                                  bytes(r / "z" / "f3")})}
    rep = run(db, r)
    assert rep.stats["files_unchanged"] == 3 and rep.stats["files_new"] == 0
    assert names(rep) == want


def full(rep: ScanReport) -> list[list[tuple[int, tuple[bytes, ...]]]]:
    return [[(f.ino, f.paths) for f in g.files] for g in rep.groups]


def test_a_name_outside_the_roots_is_in_no_answer(tmp_path: Path) -> None:
    """A member hardlinked from outside the roots, that name indexed by a scan of its
    own tree: the first scan, the rescan that reads the index's groups and the one
    that reports the kept answer list the same names (those under the roots)."""
    db, r, out = tmp_path / "i.db", tmp_path / "r", tmp_path / "out"
    put(r / "a" / "f", b"a" * SIZE)
    put(r / "b" / "g", b"a" * SIZE)
    put(r / "b" / "h", b"h" * SIZE)
    out.mkdir()
    os.link(r / "a" / "f", out / "link")
    os.link(r / "b" / "h", r / "a" / "h2")
    run(db, out)
    first = run(db, r)
    assert full(first) == [[(os.lstat(r / "a" / "f").st_ino, (bytes(r / "a" / "f"),)),
                            (os.lstat(r / "b" / "g").st_ino, (bytes(r / "b" / "g"),))]]
    assert full(run(db, r)) == full(first)  # the kept answer
    store = Store(f"sqlite:///{db}")
    try:
        store.db.run("DELETE FROM answers")
    finally:
        store.close()
    assert full(run(db, r)) == full(first)  # the index's groups
    os.unlink(out / "link")  # a change outside the roots, seen by a's ctime
    again = run(db, r)
    assert again.stats["files_changed"] == 1 and full(again) == full(first)


def test_a_scan_killed_before_its_finish_leaves_no_removed_file_behind(tmp_path: Path) -> None:
    """A file removed, then a scan killed (kill -9) after it recorded the file's
    directory (its new listing digest) and before its finish forgot the name: the
    next scans skip that directory as unchanged and must still not report the
    removed file (it was reported for ever: the name was never forgotten)."""
    db, r = tmp_path / "i.db", tmp_path / "r"
    put(r / "a" / "x1", b"x" * SIZE)
    put(r / "b" / "x2", b"x" * SIZE)
    put(r / "b" / "y", b"y" * SIZE)
    assert names(run(db, r)) == {frozenset({bytes(r / "a" / "x1"), bytes(r / "b" / "x2")})}
    (r / "b" / "x2").unlink()
    code = ("import os, signal, sys\n"
            "from dedupd.index.store import Store\n"
            "from dedupd.scan.scanner import ScanOptions, scan\n"
            "def killed(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "Store.finish_scan = killed\n"
            f"scan(Store('sqlite:///{db}'), [{str(r)!r}], ScanOptions())\n")
    rc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ),
                        timeout=120).returncode
    assert rc == -9
    for _ in range(2):
        rep = run(db, r)
        assert names(rep) == set(), rep.groups



def test_a_directory_swapped_for_a_symlink_in_the_parallel_walk(tmp_path: Path,
                                                                 attacker: object) -> None:
    """A user swaps a directory of theirs for a symlink to a tree they may not list,
    right before a walk process (of the rescan's four, sharing subtrees by
    descriptor) opens it: nothing behind the symlink is walked, the swap is a
    problem, no answer is kept from that scan, and once the user puts it back the
    next scan reports the truth."""
    from tests.fixtures.attacker import User, reachable

    assert isinstance(attacker, User)
    db, r, secret = tmp_path / "i.db", tmp_path / "r", tmp_path / "secret"
    for i in range(6):
        for j in range(6):
            put(r / f"d{i}" / f"s{j}" / "f", b"%d" % (i * 6 + j) * SIZE)
    put(r / "d5" / "s5" / "dup", b"0" * SIZE)
    put(secret / "s" / "x", b"0" * SIZE)
    put(secret / "s" / "y", b"0" * SIZE)
    secret.chmod(0o700)
    reachable(r)
    attacker.owns(r / "d5", r / "d5" / "s5", r / "d5" / "s5" / "f", r / "d5" / "s5" / "dup")
    want = {frozenset({bytes(r / "d0" / "s0" / "f"), bytes(r / "d5" / "s5" / "dup")})}
    assert names(run(db, r)) == want
    (r / "d3" / "s3" / "f").write_bytes(b"z" * SIZE)  # one directory to record
    swapped = tmp_path / "swapped"

    def swap(_point: str, path: bytes) -> None:
        if path == bytes(r / "d5" / "s5") and not swapped.exists():
            swapped.write_text(str(os.getpid()))
            attacker.run('mv "$1/s5" "$1/s5-away" && ln -s "$2/s" "$1/s5"', str(r / "d5"),
                         str(secret))

    with testpoints.acting(("walk.subdir",), swap):
        rep = run(db, r)
    assert int(swapped.read_text()) != os.getpid()  # done in a walk process
    assert [(p.path, p.reason) for p in rep.problems] == [(bytes(r / "d5" / "s5"),
                                                          "path_changed")]
    assert names(rep) == set()  # d5/s5 was not walked: dup is not reported
    store = Store(f"sqlite:///{db}")
    try:
        assert store.dirs.find(bytes(secret / "s")) is None
        assert not store.db.rows("SELECT 1 FROM directories WHERE name = ?", (b"s5-away",))
    finally:
        store.close()
    attacker.run('rm "$1/s5" && mv "$1/s5-away" "$1/s5"', str(r / "d5"))
    assert names(run(db, r)) == want
    assert names(run(db, r)) == want


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/i.db"
    return str(request.getfixturevalue("pg_url"))


def test_a_changed_file_recorded_leaves_kept_answers_alone(url: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A file rewritten (its stat changes: the walk sees it) and recorded drops its
    hashes; that is not content changing behind an unchanged stat, so hash_epoch
    stays: the scan that recorded it keeps its answer, and another tree's kept
    answer (another process's, another host's on a shared index) stays good (the
    drop voided every kept answer: the next rescan of each made a pass)."""
    from dedupd.index import answers

    passes: list[int] = []
    real = Store.groups_under
    monkeypatch.setattr(Store, "groups_under",
                        lambda self, *a: passes.append(1) or real(self, *a))
    r, o = tmp_path / "r", tmp_path / "o"
    put(r / "a" / "x", b"x" * SIZE)
    put(r / "b" / "x", b"x" * SIZE)
    put(r / "b" / "y", b"y" * SIZE)
    put(o / "p", b"p" * SIZE)
    put(o / "q", b"p" * SIZE)

    def scanned(root: Path) -> ScanReport:
        store = Store(url)
        try:
            return scan(store, [str(root)], ScanOptions())
        finally:
            store.close()

    scanned(r), scanned(o)
    (r / "b" / "y").write_bytes(b"q" * SIZE)
    assert scanned(r).stats["files_changed"] == 1
    store = Store(url)
    try:
        assert answers.epoch(store) == 0
    finally:
        store.close()
    assert passes == [1]  # the changed tree's own
    assert names(scanned(r)) == {frozenset({bytes(r / "a" / "x"), bytes(r / "b" / "x")})}
    assert names(scanned(o)) == {frozenset({bytes(o / "p"), bytes(o / "q")})}
    assert passes == [1]


PREVIOUS = "43483dc"  # the dedupd before kept answers and the parallel rescan walk


def test_an_index_of_the_previous_dedupd_rescans_right(url: str, tmp_path: Path) -> None:
    """An index written by the previous dedupd (its scan, run from `git archive`),
    then changes on disk (a duplicate removed, one added in a directory without a
    file of its own, a file rewritten): this dedupd's scans report the disk, keep an
    answer and report it again, and the old dedupd can still scan the index after."""
    from tests.integration.test_index_identity import _old_dedupd

    r = tmp_path / "r"
    put(r / "a" / "x1", b"x" * SIZE)
    put(r / "b" / "x2", b"x" * SIZE)
    put(r / "b" / "x3", b"x" * SIZE)
    put(r / "c" / "y1", b"y" * SIZE)
    put(r / "only" / "deep" / "y2", b"y" * SIZE)
    put(r / "c" / "z", b"z" * SIZE)
    old = _old_dedupd(tmp_path, PREVIOUS)

    def old_scan() -> None:
        res = subprocess.run([sys.executable, "-m", "dedupd", "scan", "--json", "--db", url,
                              str(r)], capture_output=True, env=dict(os.environ,
                                                                     PYTHONPATH=str(old)),
                             cwd=old, timeout=300)
        assert res.returncode == 0, res.stderr.decode()

    old_scan()
    (r / "b" / "x3").unlink()
    put(r / "only" / "z2", b"z" * SIZE)
    (r / "c" / "y1").write_bytes(b"w" * SIZE)
    want = {frozenset({bytes(r / "a" / "x1"), bytes(r / "b" / "x2")}),
            frozenset({bytes(r / "c" / "z"), bytes(r / "only" / "z2")})}

    def scanned() -> ScanReport:
        store = Store(url)
        try:
            return scan(store, [str(r)], ScanOptions())
        finally:
            store.close()

    assert names(scanned()) == want
    assert names(scanned()) == want
    again = scanned()
    assert names(again) == want and again.stats["bytes_read"] == 0
    old_scan()  # the old dedupd on the upgraded index
    (r / "a" / "x1").write_bytes(b"v" * SIZE)
    assert names(scanned()) == {frozenset({bytes(r / "c" / "z"), bytes(r / "only" / "z2")})}


def test_scans_of_a_subtree_and_with_an_exclude_between_two_of_the_parent(tmp_path: Path
                                                                          ) -> None:
    """The parent's answer kept; a file of a subtree rewritten to another file's bytes
    and recorded by a scan of the subtree (the parent's directories then all list as
    the index has them): the parent's next scan reports the new group. Then a scan
    with an exclude that hides a member, and the parent again: the member is back."""
    db, r = tmp_path / "i.db", tmp_path / "r"
    put(r / "a" / "x", b"x" * SIZE)
    put(r / "s" / "t" / "y", b"y" * SIZE)
    put(r / "s" / "t" / "x2", b"x" * SIZE)
    xs = frozenset({bytes(r / "a" / "x"), bytes(r / "s" / "t" / "x2")})
    assert names(run(db, r)) == {xs}
    (r / "s" / "t" / "y").write_bytes(b"x" * SIZE)
    xs3 = xs | {bytes(r / "s" / "t" / "y")}
    assert names(run(db, r / "s")) == {xs3 - {bytes(r / "a" / "x")}}
    rep = run(db, r)
    assert rep.stats["files_unchanged"] == 3 and names(rep) == {xs3}
    assert names(run(db, r)) == {xs3}
    assert names(run(db, r, exclude=("x2",))) == {xs3 - {bytes(r / "s" / "t" / "x2")}}
    assert names(run(db, r / "s", exclude=("x2",))) == set()
    assert names(run(db, r)) == {xs3}
    assert names(run(db, r)) == {xs3}


def test_fat_numbers_handed_to_another_tree_between_two_rescans(
        tmp_path: Path, fat: Fat) -> None:  # noqa: F811
    """FAT makes inode numbers up as files are looked up. Between two scans of t, a
    remount gives u/y t/x's number and a scan of u records y (its stat and bytes)
    on that number; another remount gives x its number back, so t lists as it did
    and every directory of t is skipped: x must not be taken for a copy of a
    (y's bytes) on the index's word (it was: x's row was y's, never checked)."""
    v = fat.vol
    (v / "t").mkdir()
    (v / "u").mkdir()
    for name, seed in (("t/a", b"1"), ("t/b", b"2"), ("t/x", b"9"), ("u/y", b"1"),
                       ("u/z", b"4")):
        fat_put(v / name, seed)

    def mounted(order: str) -> dict[str, int]:
        fat.remount()
        return {n: (v / n).stat().st_ino for n in ["", *order.split()]}

    db = tmp_path / "i.db"
    first = mounted("t t/x t/a t/b u u/y u/z")
    assert names(run(db, v / "t")) == set()
    second = mounted("u u/y t t/b u/z")  # y: x's number; a keeps its own
    assert second["u/y"] == first["t/x"], (first, second)
    assert names(run(db, v / "u")) == set()
    assert mounted("t t/x t/a t/b u u/y u/z") == first
    assert names(run(db, v / "t")) == set()


def test_two_hosts_on_one_postgresql_keep_their_own(pg_url: str, tmp_path: Path) -> None:
    """Two hosts sharing one PostgreSQL inventory scan trees at the same paths (here
    the same disk): each keeps and reports its own answer; one host's files changing
    and its scan recording them never puts the other's answer out of step with the
    disk the other lists, nor mixes their rows."""
    from dedupd.files.fsid import HostIdentity

    r = tmp_path / "r"
    put(r / "a" / "x", b"x" * SIZE)
    put(r / "b" / "x", b"x" * SIZE)
    put(r / "b" / "y", b"y" * SIZE)

    def scanned(host: str) -> ScanReport:
        store = Store(pg_url, HostIdentity(host, f"m-{host}"))
        try:
            return scan(store, [str(r)], ScanOptions())
        finally:
            store.close()

    xs = frozenset({bytes(r / "a" / "x"), bytes(r / "b" / "x")})
    assert names(scanned("one")) == names(scanned("two")) == {xs}
    assert names(scanned("one")) == {xs}
    (r / "b" / "y").write_bytes(b"x" * SIZE)
    assert names(scanned("two")) == {xs | {bytes(r / "b" / "y")}}
    rep = scanned("one")  # its own digests: b changed for it too
    assert rep.stats["files_changed"] == 1 and names(rep) == {xs | {bytes(r / "b" / "y")}}
    (r / "a" / "x").unlink()
    assert names(scanned("one")) == {frozenset({bytes(r / "b" / "x"), bytes(r / "b" / "y")})}
    assert names(scanned("two")) == {frozenset({bytes(r / "b" / "x"), bytes(r / "b" / "y")})}
    assert names(scanned("two")) == {frozenset({bytes(r / "b" / "x"), bytes(r / "b" / "y")})}


def test_a_long_lived_store_after_another_process_reused_a_directory_id(tmp_path: Path
                                                                        ) -> None:
    """The daemon's Store lives for weeks, caching directory ids. Another process (a
    `dedupd scan` of its own) drops a directory row it cached and SQLite gives that
    id to another path; the directory's files must still be recorded under their own
    path by the long-lived Store's next scan, and reported (they were written into
    the other path's row: the scan's groups, read from the index, lost them)."""
    db, r, o, want = _r_and_o(tmp_path)
    daemon = Store(f"sqlite:///{db}")
    try:
        assert names(scan(daemon, [str(r)], ScanOptions())) == want
        assert names(run(db, r / "z", exclude=("f*",))) == set()  # r/z's row dropped
        run(db, o)  # o takes its id
        assert names(scan(daemon, [str(r)], ScanOptions())) == want
    finally:
        daemon.close()
    assert names(run(db, o)) == set()
    assert names(run(db, r)) == want


def test_a_volume_pass_that_links_between_two_scans(tmp_path: Path) -> None:
    """`dedupd run --once` on a plain volume holding the scanned tree links its
    copies (and one outside the scan's roots) between two scans sharing its index:
    the next scans report no group (one inode), then a copy made anew is found."""
    from tests.fixtures.index import run_volume_pass

    vol = tmp_path / "vol"
    db, r = tmp_path / "i.db", vol / "r"
    put(r / "a" / "x", b"x" * SIZE)
    put(r / "b" / "x", b"x" * SIZE)
    put(vol / "s" / "x", b"x" * SIZE)
    put(r / "b" / "y", b"y" * SIZE)
    assert names(run(db, r)) == {frozenset({bytes(r / "a" / "x"), bytes(r / "b" / "x")})}
    assert names(run(db, r)) == {frozenset({bytes(r / "a" / "x"), bytes(r / "b" / "x")})}
    run_volume_pass({"kind": "plain", "path": str(vol), "mode": "apply", "settle_seconds": 0,
                     "min_size": 1}, db)
    assert os.lstat(r / "a" / "x").st_ino == os.lstat(r / "b" / "x").st_ino \
        == os.lstat(vol / "s" / "x").st_ino
    for _ in range(2):
        rep = run(db, r)
        assert names(rep) == set() and rep.stats["bytes_read"] == 0
    put(r / "c" / "y2", b"y" * SIZE)
    assert names(run(db, r)) == {frozenset({bytes(r / "b" / "y"), bytes(r / "c" / "y2")})}
    assert names(run(db, r)) == {frozenset({bytes(r / "b" / "y"), bytes(r / "c" / "y2")})}
