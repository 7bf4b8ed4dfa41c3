"""`dedupd scan` forks its walk before it opens the index (walkproc ForkedWalk with
later=True), so the scan's roots are known to two parties: the walk, and the scan
that records and answers for them. A real unprivileged user owns the symlink root
is asked to scan, and points it elsewhere while the index is being opened: the walk
and the scan must still agree on one tree (the one walked), or the scan records one
tree's files as another's, forgets the other's and its answer names the wrong roots."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dedupd.cli import main
from dedupd.commands import scan as scan_cmd
from dedupd.scan import walkproc
from tests.fixtures.attacker import User, reachable
from tests.fixtures.procs import children
from tests.integration.test_attack_rescan import blob, put

pytestmark = pytest.mark.integration


@pytest.fixture
def two_trees(tmp_path: Path, attacker: User) -> Iterator[tuple[Path, Path, Path]]:
    """a and b, each with one pair of duplicates; the attacker's directory with `link`."""
    a, b, atk = tmp_path / "a", tmp_path / "b", tmp_path / "atk"
    for t, c in ((a, "x"), (b, "y")):
        put(t / "d" / "1", blob(c))
        put(t / "d" / "2", blob(c))
    atk.mkdir()
    attacker.owns(atk)
    reachable(atk)
    attacker.run('ln -s "$2" "$1/link"', str(atk), str(a))
    yield a, b, atk / "link"


def cli_scan(db: str, root: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["scan", "--json", "--db", db, str(root)]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def test_a_root_repointed_while_the_index_opens_is_one_tree_for_walk_and_scan(
        two_trees: tuple[Path, Path, Path], attacker: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, link = two_trees
    db = f"sqlite:///{tmp_path / 'db'}"
    for t in (a, b):
        assert cli_scan(db, t, capsys)["stats"]["files_hashed"] == 2
    real_open = scan_cmd.open_index

    def repointed(args: Any) -> Any:  # the walk has its roots (a) by now
        attacker.run('ln -sfn "$2" "$1"', str(link), str(b))
        return real_open(args)

    monkeypatch.setattr(scan_cmd, "open_index", repointed)
    doc = cli_scan(db, link, capsys)
    monkeypatch.undo()
    paths = {p for g in doc["groups"] for p in g["paths"]}
    assert paths == {str(a / "d" / "1"), str(a / "d" / "2")}  # what was walked
    # neither tree lost anything: each rescan reads nothing and reports its pair
    for t in (a, b):
        again = cli_scan(db, t, capsys)
        assert again["stats"]["bytes_read"] == 0, (t, again["stats"])
        assert {p for g in again["groups"] for p in g["paths"]} == \
            {str(t / "d" / "1"), str(t / "d" / "2")}


@pytest.mark.parametrize("which", ["one", "all"])
def test_walk_processes_killed_before_the_digests_come_fail_the_scan_clearly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        which: str) -> None:
    """The early walk's processes die (the OOM killer) while the index opens: the scan
    fails with a message and exit 1, not silently and not with a traceback; it keeps
    no answer: the next scan reports the tree."""
    root, db = tmp_path / "t", f"sqlite:///{tmp_path / 'db'}"
    for i in range(20):
        put(root / f"d{i}" / "1", blob("x"))
        put(root / f"d{i}" / "2", blob("y"))
    assert len(cli_scan(db, root, capsys)["groups"]) == 2
    put(root / "d0" / "3", blob("z"))
    put(root / "d1" / "3", blob("z"))
    real_open = scan_cmd.open_index

    def killed(args: Any) -> Any:
        kids = children(os.getpid())
        assert len(kids) == walkproc.RESCAN_WALKERS
        for pid in kids if which == "all" else kids[:1]:
            os.kill(pid, signal.SIGKILL)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped
        return real_open(args)

    monkeypatch.setattr(scan_cmd, "open_index", killed)
    assert main(["scan", "--db", db, str(root)]) == 1
    err = capsys.readouterr().err
    assert "dedupd: error:" in err and "walk" in err and "Traceback" not in err, err
    monkeypatch.undo()
    assert len(cli_scan(db, root, capsys)["groups"]) == 3


def test_a_directory_swapped_for_a_symlink_as_the_early_walk_reaches_it(
        tmp_path: Path, attacker: User, capsys: pytest.CaptureFixture[str]) -> None:
    """The early walk (forked first thing, before the index is read) reaches the
    attacker's directory just as it becomes a symlink to a root-only directory
    holding the same bytes: refused (path_changed), nothing behind it indexed or
    reported, then or by the next scan."""
    from dedupd import testpoints
    from dedupd.index.store import Store

    root, private = tmp_path / "t", tmp_path / "private"
    d = root / "atk" / "d"
    for p in (d / "a", root / "e" / "a", private / "a", private / "b"):
        put(p, blob("x"))
    private.chmod(0o700)
    attacker.owns(root / "atk", d, d / "a")
    reachable(d)
    db = f"sqlite:///{tmp_path / 'db'}"
    assert len(cli_scan(db, root, capsys)["groups"]) == 1
    put(root / "e" / "c", blob("y"))  # a change: the rescan walks and records
    fired = tmp_path / "fired"  # the hook runs in a walk process

    def swap(_point: str, path: bytes) -> None:
        if path == bytes(d) and not fired.exists():
            fired.touch()
            attacker.run('mv "$1" "$1.real" && ln -s "$2" "$1"', str(d), str(private))

    with testpoints.acting(("walk.subdir",), swap):
        doc = cli_scan(db, root, capsys)
    assert fired.exists()
    assert "path_changed" in {p["reason"] for p in doc["problems"]}, doc["problems"]
    for rep in (doc, cli_scan(db, root, capsys)):
        paths = {p for g in rep["groups"] for p in g["paths"]}
        assert not any(p.startswith(str(private)) or p.startswith(str(d) + "/")
                       for p in paths), paths
    store = Store(db)
    try:
        indexed = [p for p, *_ in store.scan_paths()]
    finally:
        store.close()
    assert not [p for p in indexed if p.startswith(bytes(private))], indexed


def test_a_file_rewritten_after_the_early_listing_is_read_by_the_next_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A rescan's early walk lists the tree unchanged; while the index opens, a file
    it listed is rewritten in place (same size, its mtime put back). That rescan may
    answer for the tree as listed; the next one must not take it for unchanged."""
    root, db = tmp_path / "t", f"sqlite:///{tmp_path / 'db'}"
    for d in ("d", "e"):
        put(root / d / "a", blob("x"))
        put(root / d / "b", blob("y"))
    assert len(cli_scan(db, root, capsys)["groups"]) == 2
    f = root / "e" / "b"
    real_open = scan_cmd.open_index

    def rewritten(args: Any) -> Any:
        st = f.lstat()
        with open(f, "r+b") as out:
            out.write(blob("x"))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        return real_open(args)

    monkeypatch.setattr(scan_cmd, "open_index", rewritten)
    cli_scan(db, root, capsys)
    monkeypatch.undo()
    want = {frozenset({str(root / "d" / "a"), str(root / "e" / "a"), str(f)})}
    for _ in range(2):
        doc = cli_scan(db, root, capsys)
        assert {frozenset(g["paths"]) for g in doc["groups"]} == want
