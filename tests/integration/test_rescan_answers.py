"""The answer a scan keeps for the next unchanged rescan (dedupd/index/answers.py):
reported without a pass over the index when the tree lists as it did, and never
once the index learns something that could change it (a hash replaced or dropped
behind an unchanged stat, a name forgotten), or under other options. On SQLite and
on a real PostgreSQL (the hash_epoch trigger of each)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dedupd.index import answers
from dedupd.index.store import HashUpdate, Store
from dedupd.scan import prehash
from dedupd.scan.scanner import ScanOptions, ScanReport, scan

SIZE = 9000


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/i.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "t"
    for d, name, c in (("a", "a1", b"a"), ("b", "a2", b"a"), ("b", "b1", b"b"),
                       ("c", "small1", b"s"), ("c", "small2", b"s")):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / name).write_bytes(c * (SIZE if not name.startswith("small") else 10))
    return root


@pytest.fixture
def no_index_pass(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the passes over the index's groups a scan makes (Store.groups_under)."""
    calls: list[int] = []
    real = Store.groups_under

    def counted(self: Store, roots: object, min_size: int) -> object:
        calls.append(min_size)
        return real(self, roots, min_size)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "groups_under", counted)
    yield calls


def run(url: str, root: Path, **opts: int) -> ScanReport:
    store = Store(url)
    try:
        return scan(store, [str(root)], ScanOptions(**opts))
    finally:
        store.close()


def groups(rep: ScanReport) -> set[frozenset[str]]:
    return {frozenset(os.fsdecode(os.path.basename(p)) for f in g.files for p in f.paths)
            for g in rep.groups}


def with_store(url: str) -> Store:
    return Store(url)


def test_kept_answer_is_reported_without_a_pass(url: str, tree: Path,
                                                no_index_pass: list[int]) -> None:
    first = run(url, tree)
    again = run(url, tree)
    assert no_index_pass == []
    assert groups(again) == groups(first) == {frozenset({"a1", "a2"}),
                                              frozenset({"small1", "small2"})}
    assert [[(f.dev, f.ino, f.size, f.full, f.paths) for f in g.files] for g in again.groups] \
        == [[(f.dev, f.ino, f.size, f.full, f.paths) for f in g.files] for g in first.groups]
    assert again.stats["bytes_read"] == 0
    st = with_store(url)
    try:
        assert answers.epoch(st) == 0  # first hashes and dropped heads move nothing
    finally:
        st.close()


def test_a_hash_replaced_behind_an_unchanged_stat_voids_it(url: str, tree: Path,
                                                           no_index_pass: list[int]) -> None:
    first = run(url, tree)
    run(url, tree / "c")  # another tree's answer (from the index), kept at epoch 0
    a = next(f for g in first.groups for f in g.files if f.path.endswith(b"/a1"))
    b = os.lstat(tree / "b" / "b1")
    st = with_store(url)
    try:  # the index learns (as a verification would) that b1 now holds a's bytes
        st.fs_of(b.st_dev, bytes(tree))  # met: its hashes can be written
        st.save_hashes([HashUpdate(b.st_dev, b.st_ino, a.head, a.full)])
        assert answers.epoch(st) == 1
    finally:
        st.close()
    rep = run(url, tree)
    assert no_index_pass == [1, 1]
    assert frozenset({"a1", "a2", "b1"}) in groups(rep)  # the index's answer now
    st = with_store(url)
    try:  # c's answer, void since epoch 1, was dropped when tree's was kept
        assert [int(r[0]) for r in st.db.rows("SELECT epoch FROM answers")] == [1]
    finally:
        st.close()


def test_a_hash_dropped_behind_an_unchanged_stat_voids_it(url: str, tree: Path,
                                                          no_index_pass: list[int]) -> None:
    run(url, tree)
    a2 = os.lstat(tree / "b" / "a2")
    st = with_store(url)
    try:  # an extent pass found a2's bytes differ from its hash: dropped
        st.fs_of(a2.st_dev, bytes(tree))
        st.save_hashes([HashUpdate(a2.st_dev, a2.st_ino, None, None)])
    finally:
        st.close()
    rep = run(url, tree)
    assert no_index_pass == [1] and rep.stats["bytes_read"] == SIZE  # read again
    assert groups(rep) == {frozenset({"a1", "a2"}), frozenset({"small1", "small2"})}
    assert run(url, tree).stats["bytes_read"] == 0 and no_index_pass == [1]  # kept again


def test_a_forgotten_file_voids_it(url: str, tree: Path, no_index_pass: list[int]) -> None:
    run(url, tree)
    a2 = os.lstat(tree / "b" / "a2")
    st = with_store(url)
    try:
        st.fs_of(a2.st_dev, bytes(tree))
        st.forget([(a2.st_dev, a2.st_ino)])
    finally:
        st.close()
    rep = run(url, tree)
    assert groups(rep) == {frozenset({"a1", "a2"}), frozenset({"small1", "small2"})}
    assert rep.stats["files_new"] == 1


def test_a_row_made_anew_behind_an_unchanged_listing_voids_it(
        url: str, tree: Path, no_index_pass: list[int]) -> None:
    """A member's inode row dropped and made again without its hashes while its
    directory's digest stays, then given another content's hash as a first hash
    (neither counted as a hash moving): the answer holds its members' rows as they
    were, so the delete itself must void it (the inodes_gone trigger)."""
    first = run(url, tree)
    a2 = os.lstat(tree / "b" / "a2")
    st = with_store(url)
    try:
        st.fs_of(a2.st_dev, bytes(tree))
        key = st.key_of(a2.st_dev, a2.st_ino)
        assert key is not None
        p = st.db.p
        with st.db.tx() as cur:
            cur.execute(f"SELECT size, mtime_ns, ctime_delta, seen, unstable FROM inodes "
                        f"WHERE fs = {p} AND ino = {p}", key)
            row = cur.fetchone()
            cur.execute(f"DELETE FROM inodes WHERE fs = {p} AND ino = {p}", key)
            cur.execute(f'INSERT INTO inodes (fs, ino, size, mtime_ns, ctime_delta, head, "full", '
                        f"seen, unstable) VALUES ({p}, {p}, {p}, {p}, {p}, NULL, NULL, {p}, {p})",
                        (*key, *row))
        assert answers.epoch(st) == 1  # the delete, counted
        # a first hash: the index now says a2 holds a content of its own
        st.save_hashes([HashUpdate(a2.st_dev, a2.st_ino, 1, b"\x01" * 16)])
        assert answers.epoch(st) == 1
    finally:
        st.close()
    rep = run(url, tree)
    assert no_index_pass == [1]  # not the kept answer: the index's
    assert groups(rep) == {frozenset({"small1", "small2"})} != groups(first)
    assert rep.stats["bytes_read"] == 0


def test_an_index_without_the_delete_trigger_gets_it_before_an_answer_is_kept(
        url: str, tree: Path, no_index_pass: list[int]) -> None:
    """An index made by an older dedupd has no inodes_gone trigger: the first scan
    to keep an answer makes it and keeps none (a delete during that scan went
    uncounted); the next keeps one, and the one after reports it."""
    run(url, tree)
    st = with_store(url)
    try:
        with st.db.tx() as cur:
            cur.execute("DROP TRIGGER inodes_gone" + (" ON inodes" if st.dialect ==
                                                      "postgresql" else ""))
            cur.execute("DELETE FROM answers")
    finally:
        st.close()
    assert groups(run(url, tree)) == {frozenset({"a1", "a2"}), frozenset({"small1", "small2"})}
    st = with_store(url)
    try:
        assert st.db.rows("SELECT count(*) FROM answers")[0][0] == 0
    finally:
        st.close()
    run(url, tree)  # keeps it now
    assert no_index_pass == [1, 1]
    again = run(url, tree)
    assert no_index_pass == [1, 1] and groups(again) == {frozenset({"a1", "a2"}),
                                                         frozenset({"small1", "small2"})}


def test_other_options_have_their_own(url: str, tree: Path, no_index_pass: list[int]) -> None:
    run(url, tree)
    rep = run(url, tree, min_size=100)
    assert groups(rep) == {frozenset({"a1", "a2"})}
    assert groups(run(url, tree)) == {frozenset({"a1", "a2"}), frozenset({"small1", "small2"})}
    assert groups(run(url, tree, min_size=100)) == {frozenset({"a1", "a2"})}


@pytest.mark.parametrize("everywhere", [False, True])
def test_a_changed_tree_is_hashed_without_the_feeders(url: str, tree: Path, everywhere: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A rescan that expects its kept answer forks no feeders (scanner.NoEarlyHashing);
    when the tree changed after all, what it records is read after the walk: in one
    directory (the others skipped), or in every one (none skipped: the index's size
    groups)."""
    run(url, tree)

    def no_feeders(*_a: object) -> None:
        raise AssertionError("feeders forked for a rescan that expects its answer")

    monkeypatch.setattr(prehash.EarlyHashing, "__init__", no_feeders)
    (tree / "b" / "b1").write_bytes(b"a" * SIZE)  # now a copy of a1, same size
    if everywhere:
        (tree / "a" / "a3").write_bytes(b"a" * SIZE)
        (tree / "c" / "small3").write_bytes(b"s" * 10)
        (tree / "new").write_bytes(b"n")
    again = run(url, tree)
    want = {frozenset({"a1", "a2", "b1"} | ({"a3"} if everywhere else set())),
            frozenset({"small1", "small2"} | ({"small3"} if everywhere else set()))}
    assert groups(again) == want
    assert (again.stats["files_changed"], again.stats["files_new"]) == \
        (1, 3 if everywhere else 0)
    assert again.stats["bytes_read"] >= SIZE  # b1 (and a3) read after the walk
    assert groups(run(url, tree)) == want  # and that answer is kept


def test_a_kept_answers_json_made_beside_the_walk_is_the_reports(
        tmp_path: Path, tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """scan(json_groups=True): a reported kept answer comes with its groups' JSON,
    made while the walk ran; `dedupd scan --json` prints it around the rest, and the
    text is json.dumps of the whole report, byte for byte (names not UTF-8 too)."""
    import json

    from dedupd.commands.scan import _json_text
    from dedupd.output import print_json

    (tree / "a" / b"\xff\xfename".decode("utf-8", "surrogateescape")).write_bytes(b"a" * SIZE)
    url = f"sqlite:///{tmp_path}/i.db"
    reports = []
    for _ in range(2):
        store = Store(url)
        try:
            reports.append(scan(store, [str(tree)], ScanOptions(), json_groups=True))
        finally:
            store.close()
    first, again = reports
    assert first.groups_json is None  # a first scan: made after, as before
    assert again.groups_json is not None and again.stats["bytes_read"] == 0
    print_json(again.as_json())  # to a pipe: compact, the text it is made to be
    assert _json_text(again) == capsys.readouterr().out
    assert json.loads(_json_text(again))["groups"] == first.as_json()["groups"]
    assert len(first.as_json()["groups"][0]["paths"]) == 3


def test_one_answer_is_kept_per_roots_set(url: str, tree: Path) -> None:
    """Every min size (or exclude, or dedupd version) tried on a tree kept an answer
    of its own, forever (each as big as the tree's groups): now the newest of a
    roots set replaces the others, and a key of an older format goes."""
    st = with_store(url)
    try:
        with st.db.tx() as cur:  # an answer kept by the previous format (no ':')
            cur.execute(f'INSERT INTO answers (host, "key", fingerprint, epoch, answer) '
                        f"VALUES ({st.db.p}, 'f' || '0', {st.db.p}, 0, {st.db.p})",
                        (st.host, b"\0" * 16, b"x"))
    finally:
        st.close()

    def kept() -> list[str]:
        st = with_store(url)
        try:
            return sorted(str(k) for (k,) in st.db.rows('SELECT "key" FROM answers'))
        finally:
            st.close()

    for size in (1, 100, 2, 3, 4097):
        run(url, tree, min_size=size)
        [only] = kept()
    assert groups(run(url, tree, min_size=4097)) == {frozenset({"a1", "a2"})}
    [only] = kept()
    run(url, tree / "b")
    assert len(kept()) == 2 and only in kept()
    assert groups(run(url, tree)) == {frozenset({"a1", "a2"}), frozenset({"small1", "small2"})}
    assert len(kept()) == 2 and only not in kept()
