"""`dedupd scan` against generated trees with known truth and jdupes as an oracle."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from dedupd.index.store import IndexedFile, Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan
from tests.fixtures.components import require_tools
from tests.oracles import dedupd_groups, jdupes_groups, scan_json
from tests.treegen import Builder, hostile_tree


def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/index.db"



def _scan_closed(url: str, *args: Any, **kw: Any) -> ScanReport:
    """scan() on a Store of its own, closed after (its fds do not outlive the test)."""
    store = Store(url)
    try:
        return scan(store, *args, **kw)
    finally:
        store.close()


def _counts(url: str) -> dict[str, int]:
    store = Store(url)
    try:
        return store.counts()
    finally:
        store.close()

def test_groups_equal_truth_and_jdupes(tmp_path: Path) -> None:
    tree = hostile_tree(tmp_path / "t", newline_names=False)
    doc = scan_json(tree.root, db=db(tmp_path))
    ours = dedupd_groups(doc)
    assert ours == tree.truth()
    assert ours == jdupes_groups(tree.root)
    st = doc["stats"]
    assert isinstance(st, dict)
    assert st["groups"] == len(tree.truth())
    assert st["special_files"] == 1 and st["symlinks"] == 2


def test_newline_and_non_utf8_names(tmp_path: Path) -> None:
    tree = hostile_tree(tmp_path / "t", newline_names=True)
    doc = scan_json(tree.root, db=db(tmp_path))
    assert dedupd_groups(doc) == tree.truth()
    names = {os.fsencode(p) for g in doc["groups"] for p in g["paths"]}  # type: ignore[attr-defined]
    assert any(b"new\nline" in n for n in names)
    assert any(b"\xff\xfe raw" in n for n in names)  # surrogateescape round-trips the bytes


def test_text_output_escapes_odd_names(tmp_path: Path) -> None:
    tree = hostile_tree(tmp_path / "t", newline_names=True)
    exe = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dedupd"
    out = subprocess.run([str(exe), "scan", "--db", db(tmp_path), str(tree.root)],
                         capture_output=True, check=True).stdout
    assert b"new\\nline" in out and b"\\xff\\xfe raw" in out
    assert b"new\nline" not in out  # one path per line, always


def test_same_tree_twice_and_nested_roots(tmp_path: Path) -> None:
    tree = hostile_tree(tmp_path / "t", newline_names=False)
    doc = scan_json(tree.root, tree.root, tree.root / "dups", db=db(tmp_path))
    assert dedupd_groups(doc) == tree.truth()
    for g in doc["groups"]:  # type: ignore[attr-defined]
        assert len(set(g["paths"])) == len(g["paths"])


def test_second_scan_reads_nothing_and_hardlinks_are_one_file(tmp_path: Path) -> None:
    tree = hostile_tree(tmp_path / "t", newline_names=False)
    first = scan_json(tree.root, db=db(tmp_path))
    again = scan_json(tree.root, db=db(tmp_path))
    assert first["stats"]["bytes_read"] > 0  # type: ignore[index]
    assert again["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert again["stats"]["files_hashed"] == 0  # type: ignore[index]
    assert dedupd_groups(again) == tree.truth()
    links = [g for g in again["groups"] if g.get("hardlinks")]  # type: ignore[attr-defined]
    assert len(links) == 1 and len(links[0]["hardlinks"]) == 2 and len(links[0]["paths"]) == 2


def test_incremental_rescan_hashes_only_changed_files(tmp_path: Path) -> None:
    b = Builder(tmp_path / "t", seed=11)
    for _ in range(500):  # 1,000 files in pairs of equal size: 500 groups
        b.group(b.data(b.rng.randrange(5000, 20000)), 2)
    url = db(tmp_path)
    scan_json(b.tree.root, db=url)
    changed = b.tree.files[::100]  # 1%: 10 files
    for i, p in enumerate(changed):
        st = os.stat(p)
        with open(p, "r+b") as f:
            f.write(os.urandom(st.st_size))
        if i % 2:  # half keep their old mtime: only ctime betrays the write
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    doc = scan_json(b.tree.root, db=url)
    st = doc["stats"]
    assert st["files_hashed"] == len(changed)  # type: ignore[index]
    assert st["files_changed"] == len(changed)  # type: ignore[index]
    assert st["groups"] == 500 - len(changed)  # type: ignore[index]


def test_deleted_files_leave_the_index(tmp_path: Path) -> None:
    b = Builder(tmp_path / "t")
    pair = b.group(b.data(10_000), 2)
    url = db(tmp_path)
    scan_json(b.tree.root, db=url)
    os.unlink(pair[1])
    doc = scan_json(b.tree.root, db=url)
    assert doc["groups"] == [] and doc["stats"]["files_forgotten"] == 1  # type: ignore[index]
    assert _counts(url)["paths"] == 1


class StageHook:
    """A dedupd.progress.Progress that calls fn(phase, files, 0) at each update:
    the scan's progress reports as a test seam."""

    def __init__(self, fn: Callable[[str, int, int], None]) -> None:
        self.fn, self.stage = fn, ""

    def phase(self, name: str, files_total: int | None = None,
              bytes_total: int | None = None) -> None:
        self.stage = name

    def update(self, files: int | None = None, nbytes: int | None = None,
               **totals: object) -> None:
        if files is not None:
            self.fn(self.stage, files, 0)

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        pass

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.fn(stage, done, total)


def _before_hashing(monkeypatch: pytest.MonkeyPatch, early: bool,
                    touch: Callable[[], None]) -> StageHook | None:
    """Run `touch` once, after the walk saw the files and before any was read.

    early: inside the early hashing's feeder (in this process, for the hook),
    before it reads the batch; otherwise early hashing lets go at once and the
    walk's progress hook runs it, before the find pass reads anything.
    """
    from dedupd.hashing import engine
    from dedupd.scan import prehash

    done: list[bool] = []

    def once() -> None:
        if not done:
            done.append(True)
            touch()

    if not early:
        monkeypatch.setattr(prehash, "PREHASH_LIMIT", 0)
        return StageHook(lambda stage, _done, _total: once() if stage == "walk" else None)
    monkeypatch.setattr(prehash, "FEED_PROCS", 0)
    put = engine.Feeder.put

    def put_after(self: engine.Feeder, batch: Sequence[IndexedFile]) -> object:
        once()
        return put(self, batch)

    monkeypatch.setattr(engine.Feeder, "put", put_after)
    return None


@pytest.mark.parametrize("early", [True, False], ids=["early", "after-walk"])
def test_file_vanishing_between_walk_and_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              early: bool) -> None:
    b = Builder(tmp_path / "t")
    data = b.data(30_000)
    paths = b.group(data, 3)
    progress = _before_hashing(monkeypatch, early, lambda: os.unlink(paths[0]))
    rep = _scan_closed(db(tmp_path), [b.tree.root], ScanOptions(), progress=progress)
    assert [p.reason for p in rep.problems] == ["vanished"]
    assert len(rep.groups) == 1 and {f.path for f in rep.groups[0].files} == set(paths[1:])
    assert rep.stats["files_forgotten"] + _counts(db(tmp_path))["paths"] >= 2


@pytest.mark.parametrize("early", [True, False], ids=["early", "after-walk"])
def test_file_changing_during_hash_is_not_grouped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  early: bool) -> None:
    b = Builder(tmp_path / "t")
    paths = b.group(b.data(30_000), 2)

    def grow() -> None:
        with open(paths[0], "ab") as f:
            f.write(b"more")

    progress = _before_hashing(monkeypatch, early, grow)
    rep = _scan_closed(db(tmp_path), [b.tree.root], ScanOptions(), progress=progress)
    assert rep.groups == ()
    assert [p.reason for p in rep.problems] == ["changed"]


def test_a_file_written_between_two_of_its_names_keeps_no_stale_hash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The walk meets name 1, the file is rewritten, the walk meets name 2 (a
    # hardlink, walked later): the index must end with the new stat and no hash
    # of the old bytes, however the pre-hasher's reads and writes interleave.
    import threading

    from dedupd.hashing import engine
    from dedupd.scan import prehash, scanner

    b = Builder(tmp_path / "t")
    data = b.data(50_000)
    a, _ = b.group(data, 2)
    (tmp_path / "t" / "z").mkdir()
    os.link(a, tmp_path / "t" / "z" / "a2")  # a subdirectory: walked after both files
    monkeypatch.setattr(scanner, "RECORD_BATCH", 1)
    monkeypatch.setattr(prehash, "FEED_PROCS", 0)  # the hook needs the feeder here
    monkeypatch.setattr(scanner, "WALK_PROC", False)  # and the walk in step with it
    put, calls, both_read = engine.Feeder.put, [], threading.Event()

    def put_counted(self: engine.Feeder, batch: Sequence[IndexedFile]) -> object:
        out = put(self, batch)
        calls.append(1)
        if len(calls) == 2:
            both_read.set()  # the pair's hashes are read, their write still buffered
        return out

    monkeypatch.setattr(engine.Feeder, "put", put_counted)

    def rewrite(stage: str, seen: int, _total: int) -> None:
        if stage == "walk" and seen == 2:
            assert both_read.wait(30)
            with open(a, "r+b") as f:
                f.write(bytes([data[0] ^ 1]))

    url = db(tmp_path)
    rep = _scan_closed(url, [b.tree.root], ScanOptions(), progress=StageHook(rewrite))
    assert rep.groups == ()
    assert {p.reason for p in rep.problems} == {"changed"}
    again = _scan_closed(url, [b.tree.root], ScanOptions())
    assert again.groups == () and again.problems == ()


def test_early_hashing_gives_what_the_index_pass_gives(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The pre-hasher (hashing during the walk) and the index's size groups (its
    # fallback past PREHASH_LIMIT) must agree on groups, reads and counters,
    # also with hardlinks split across record batches and large-file heads.
    from dedupd.scan import prehash, scanner
    from tests.treegen import bulk_tree

    tree = bulk_tree(tmp_path / "t", files=600, total_bytes=60_000_000, dup_ratio=0.4)
    b = Builder(tmp_path / "t" / "links")
    big = b.group(b.data(300_000), 2)  # > WHOLE_READ: heads first
    b.unique(300_000)  # same size, other content: its head differs
    for i, p in enumerate(big + tree.files[:5]):
        os.link(p, tmp_path / "t" / "links" / f"zz-link{i}")  # walked last: later batches
    monkeypatch.setattr(scanner, "RECORD_BATCH", 7)
    reports, default = {}, prehash.PREHASH_LIMIT
    # forked feeders, one feeder in a thread, none, and forked ones that let go
    for limit, procs in ((default, 2), (default, 0), (0, 2), (250, 2)):
        monkeypatch.setattr(prehash, "PREHASH_LIMIT", limit)
        monkeypatch.setattr(prehash, "FEED_PROCS", procs)
        reports[limit, procs] = _scan_closed(f"sqlite:///{tmp_path}/{limit}-{procs}.db",
                                     [tmp_path / "t"], ScanOptions())
    first = reports[default, 2]
    assert len(first.groups) >= 50 and first.stats["bytes_read"] > 0
    keys = ("files_hashed", "bytes_read", "bytes_hashed", "groups", "duplicate_bytes")

    def shape(rep: ScanReport) -> list[tuple[int, list[tuple[bytes, ...]]]]:
        return [(g.size, [f.paths for f in g.files]) for g in rep.groups]

    for rep in reports.values():
        assert shape(rep) == shape(first)
        assert {k: rep.stats[k] for k in keys} == {k: first.stats[k] for k in keys}
    linked = [g for g in first.groups if any(len(f.paths) == 2 for f in g.files)]
    assert len(linked) >= 2  # a hardlink's two names stayed one inode
    for limit, procs in reports:  # unchanged rescans, with and without early groups
        monkeypatch.setattr(prehash, "PREHASH_LIMIT", limit)
        monkeypatch.setattr(prehash, "FEED_PROCS", procs)
        again = _scan_closed(f"sqlite:///{tmp_path}/{limit}-{procs}.db", [tmp_path / "t"],
                     ScanOptions())
        assert again.stats["bytes_read"] == 0 and shape(again) == shape(first)


def test_a_first_scan_killed_with_rows_held_leaves_an_index_the_next_scan_completes(
        tmp_path: Path) -> None:
    """New inode rows wait a few record batches for their hashes (dedupd/index/held.py)
    while their names are written: a first scan killed (kill -9) with rows held
    leaves names without inode rows. The next scans must still find every group,
    then read nothing: a directory whose rows were lost has no digest stored."""
    import signal
    import sys

    from tests.treegen import bulk_tree

    tree = bulk_tree(tmp_path / "t", files=400, total_bytes=4_000_000, dup_ratio=0.4)
    url = f"sqlite:///{tmp_path}/i.db"
    want = _scan_closed(f"sqlite:///{tmp_path}/clean.db", [tree.root], ScanOptions())
    code = ("import os, signal\n"
            "from dedupd.index.store import Store\n"
            "from dedupd.scan import scanner\n"
            "scanner.RECORD_BATCH = 20\n"
            "def killed(*a, **k):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n"
            "Store.release_held = killed\n"
            f"scanner.scan(Store({url!r}), [{str(tree.root)!r}], scanner.ScanOptions())\n")
    rc = subprocess.run([sys.executable, "-c", code], timeout=120).returncode
    assert rc == -signal.SIGKILL
    counts = _counts(url)
    assert 0 < counts["inodes"] < counts["paths"] == 400  # rows were held when killed

    def shape(rep: ScanReport) -> list[list[bytes]]:
        return [[f.path for f in g.files] for g in rep.groups]

    assert len(want.groups) >= 20
    again = _scan_closed(url, [tree.root], ScanOptions())
    assert shape(again) == shape(want) and again.problems == ()
    assert 0 < again.stats["files_new"] < 400  # only what the killed scan lost
    third = _scan_closed(url, [tree.root], ScanOptions())
    assert third.stats["bytes_read"] == 0 and shape(third) == shape(want)
    assert _counts(url) == _counts(f"sqlite:///{tmp_path}/clean.db")


def test_settle_leaves_fresh_files_pending(tmp_path: Path) -> None:
    b = Builder(tmp_path / "t")
    b.group(b.data(10_000), 2)
    rep = _scan_closed(db(tmp_path), [b.tree.root], ScanOptions(settle_seconds=300))
    assert rep.groups == () and rep.stats["files_pending"] == 2
    assert rep.stats["bytes_read"] == 0


def test_unreadable_files_are_reported_not_fatal(tmp_path: Path) -> None:
    require_tools("setpriv")
    # pytest's tmp_path sits under a 0700 directory: the unprivileged scanner needs a way in
    tmp_path = Path(tempfile.mkdtemp(prefix="dedupd-unreadable-"))
    os.chmod(tmp_path, 0o755)
    try:
        _unreadable_case(tmp_path)
    finally:
        subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


def _unreadable_case(tmp_path: Path) -> None:
    tree = hostile_tree(tmp_path / "t", newline_names=False)
    locked = tree.groups[0][0]
    os.chmod(locked, 0)
    secret = tree.root / "secretdir"
    secret.mkdir()
    (secret / "x").write_bytes(b"x" * 100)
    os.chmod(secret, 0)
    dbdir = tmp_path / "db"
    dbdir.mkdir()
    os.chown(dbdir, 65534, 65534)
    exe = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dedupd"
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        str(exe), "scan", "--json", "--db", f"sqlite:///{dbdir}/i.db",
                        str(tree.root)], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    import json

    doc = json.loads(r.stdout)
    problems = {(os.fsencode(p["path"]), p["reason"]) for p in doc["problems"]}
    assert (locked, "unreadable") in problems
    assert (os.fsencode(secret), "unreadable") in problems
    truth = tree.truth()
    lk = (os.stat(locked).st_dev, os.stat(locked).st_ino)
    expected = {g - {lk} for g in truth}
    assert dedupd_groups(doc) == {g for g in expected if len(g) > 1}


def test_mount_points_not_crossed_unless_asked(tmp_path: Path) -> None:
    require_tools("mount")
    b = Builder(tmp_path / "t")
    data = b.data(20_000)
    b.write(data)
    inner = tmp_path / "t" / "inner"
    inner.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(inner)], check=True)
    try:
        (inner / "copy").write_bytes(data)
        doc = scan_json(b.tree.root, db=db(tmp_path))
        assert doc["groups"] == [] and doc["stats"]["mount_points_skipped"] == 1  # type: ignore[index]
        doc = scan_json(b.tree.root, "--cross-mounts", db=f"sqlite:///{tmp_path}/other.db")
        assert len(doc["groups"]) == 1  # type: ignore[arg-type]
    finally:
        subprocess.run(["umount", str(inner)], check=False)


def test_postgresql_index_gives_the_same_answer(tmp_path: Path, pg_url: str) -> None:
    tree = hostile_tree(tmp_path / "t", newline_names=True)
    doc = scan_json(tree.root, db=pg_url)
    assert dedupd_groups(doc) == tree.truth()
    again = scan_json(tree.root, db=pg_url)
    assert again["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert dedupd_groups(again) == tree.truth()


@pytest.mark.parametrize("min_size", ["1", "64K"])
def test_min_size_and_exclude(tmp_path: Path, min_size: str) -> None:
    b = Builder(tmp_path / "t")
    small = b.group(b.data(1000), 2)
    big = b.group(b.data(100_000), 2)
    b.group(b.data(5000), 2, sub="skipme")
    doc = scan_json(b.tree.root, "--min-size", min_size, "--exclude", "skipme",
                    db=db(tmp_path))
    got = dedupd_groups(doc)
    from tests.treegen import as_inode_groups

    want = as_inode_groups([big] if min_size == "64K" else [small, big])
    assert got == want


def test_bulk_tree_matches_jdupes(tmp_path: Path) -> None:
    from tests.treegen import bulk_tree

    tree = bulk_tree(tmp_path / "t", files=1500, total_bytes=30_000_000, dup_ratio=0.3)
    doc = scan_json(tree.root, db=db(tmp_path))
    ours = dedupd_groups(doc)
    assert ours == jdupes_groups(tree.root)
    assert tree.truth() <= ours  # every planted group found (random small files may add more)
    assert len(ours) >= 100


def test_an_index_failure_mid_walk_stops_the_scan_cleanly(tmp_path: Path) -> None:
    # The walk's batches are recorded in a thread of their own: its error must
    # reach the caller (not hang the walk, not be lost), and no thread may stay.
    import threading

    from dedupd.files.events import FileEvent
    from dedupd.index.store import RecordResult
    from dedupd.scan import scanner

    class Failing(Store):
        calls = 0

        def record(self, scan_id: int, events: Sequence[FileEvent],
                   touch_inodes: bool = True, digests: Sequence[tuple[bytes, bytes]] = ()
                   ) -> RecordResult:
            Failing.calls += 1
            if Failing.calls == 2:
                raise OSError(28, "No space left on device")
            return super().record(scan_id, events, touch_inodes, digests)

    for i in range(5 * scanner.RECORD_BATCH):
        d = tmp_path / "t" / f"d{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(b"x")
    before = threading.active_count()
    with pytest.raises(OSError, match="No space left"):
        scan(Failing(db(tmp_path)), [str(tmp_path / "t")], ScanOptions())
    assert threading.active_count() == before
    assert Failing.calls >= 2


def test_a_head_learnt_in_one_batch_and_the_whole_in_a_later_one_keeps_the_full_hash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # x1 and z (same size, other heads) are read head-first when z is recorded; x2,
    # recorded after, collides with x1's head, so x1 is read whole: two updates of
    # x1 (head only, then with its full hash) reach one write of the index, which
    # must keep the later. Roots are walked in sorted order, one file a batch.
    monkeypatch.setattr("dedupd.scan.scanner.RECORD_BATCH", 1)
    size = 200_000  # larger than WHOLE_READ: read head first
    same = os.urandom(size)
    for root, data in (("1", same), ("2", b"z" + same[1:]), ("3", same)):
        (tmp_path / root).mkdir()
        (tmp_path / root / "f.bin").write_bytes(data)
    roots = [tmp_path / r for r in ("1", "2", "3")]
    url = db(tmp_path)
    first = _scan_closed(url, roots, ScanOptions())
    assert [len(g.files) for g in first.groups] == [2]
    again = _scan_closed(url, roots, ScanOptions())
    assert again.stats["bytes_read"] == 0
    assert [[f.path for f in g.files] for g in again.groups] == \
        [[f.path for f in g.files] for g in first.groups]


def test_an_inode_held_from_one_batch_and_named_twice_in_the_next_is_one_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A new inode row waits a few record batches for its hashes (index/held.py); a
    # later batch that names the same inode twice (three hardlinks: one name in the
    # first batch, two in the second) takes the held row once and records one file
    # with every name.
    from dedupd.scan import scanner

    root = tmp_path / "t"
    (root / "d1").mkdir(parents=True)
    (root / "d2").mkdir()
    data = os.urandom(20_000)
    (root / "d1" / "a").write_bytes(data)
    (root / "d1" / "filler").write_bytes(os.urandom(30_000))
    os.link(root / "d1" / "a", root / "d2" / "b")
    os.link(root / "d1" / "a", root / "d2" / "c")
    (root / "d2" / "copy").write_bytes(data)
    monkeypatch.setattr(scanner, "RECORD_BATCH", 2)  # d1's two files, then d2's
    url = db(tmp_path)
    want = [[(str(root / "d1" / "a").encode(), str(root / "d2" / "b").encode(),
              str(root / "d2" / "c").encode()), (str(root / "d2" / "copy").encode(),)]]
    rep = _scan_closed(url, [root], ScanOptions())
    assert [sorted(f.paths for f in g.files) for g in rep.groups] == want
    again = _scan_closed(url, [root], ScanOptions())
    assert [sorted(f.paths for f in g.files) for g in again.groups] == want
    assert again.stats["bytes_read"] == 0
