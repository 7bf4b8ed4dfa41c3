"""walk_listed (the walk of every scan) against walk (no digests): the same files and
counters whatever the options, a directory too big to hold streamed without a
digest, and an unchanged directory's files held back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd import handles
from dedupd.files.events import FileEvent, WalkStats
from dedupd.scan import listing
from dedupd.scan.walk import DirListed, WalkOptions, normalize_roots, walk, walk_listed


def tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    for i in range(6):
        (root / f"f{i}").write_bytes(b"x" * i)  # f0 is empty: too small at min_size 1
        (root / "sub" / f"g{i}.skip").write_bytes(b"y" * (i + 1))
    (root / "sub" / "deeper" / "h").write_bytes(b"z")
    os.symlink("f1", root / "link")
    os.mkfifo(root / "fifo")


def run(root: Path, opts: WalkOptions, known: dict[bytes, tuple[bytes, int]] | None
        ) -> tuple[list[FileEvent], list[DirListed], WalkStats]:
    roots = normalize_roots([root])
    stats = WalkStats()
    with handles.anchored(roots):
        got = list(walk(roots, opts, stats) if known is None
                   else walk_listed(roots, opts, stats, known))
    return ([e for e in got if isinstance(e, FileEvent)],
            [d for d in got if isinstance(d, DirListed)], stats)


@pytest.mark.parametrize("cap", [listing.LIST_CAP, 3])
@pytest.mark.parametrize("opts", [WalkOptions(), WalkOptions(min_size=3),
                                  WalkOptions(exclude=("*.skip",))])
def test_same_files_and_counters_as_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         cap: int, opts: WalkOptions) -> None:
    tree(tmp_path)
    monkeypatch.setattr(listing, "LIST_CAP", cap)  # where the walk reads it
    files, _, stats = run(tmp_path, opts, None)
    listed_files, listed, lstats = run(tmp_path, opts, {})
    assert sorted(listed_files) == sorted(files) and files
    assert lstats == stats
    by_dir = {d.path: d for d in listed}
    assert set(by_dir) == {os.fsencode(p) for p in (tmp_path, tmp_path / "sub",
                                                    tmp_path / "sub" / "deeper")}
    for d in listed:  # each directory's count is its own files'
        assert d.files == sum(1 for e in files if os.path.dirname(e.path) == d.path)
        assert not d.same
        # more than `cap` entries: no digest (the top has 9, sub 7 or 1 when excluded)
        assert (d.digest == b"") == (len(os.listdir(d.path)) - (
            6 if opts.exclude and d.path.endswith(b"/sub") else 0) > cap)


def test_unchanged_directory_holds_its_files_back(tmp_path: Path) -> None:
    tree(tmp_path)
    _, listed, _ = run(tmp_path, WalkOptions(), {})
    dev = os.lstat(tmp_path).st_dev
    known = {d.path: (d.digest, dev) for d in listed if not d.path.endswith(b"/sub")}
    files, again, stats = run(tmp_path, WalkOptions(), known)
    assert {os.path.dirname(e.path) for e in files} == {os.fsencode(tmp_path / "sub")}
    assert {d.path: (d.digest, d.same) for d in again} == {
        d.path: (d.digest, not d.path.endswith(b"/sub")) for d in listed}
    assert stats.files_seen == 13 and stats.too_small == 1
    # a changed file (its ctime) changes its directory's digest: its files come back
    os.utime(tmp_path / "f2")
    files, again, _ = run(tmp_path, WalkOptions(), known)
    assert {e.path for e in files} >= {os.fsencode(tmp_path / f"f{i}") for i in range(1, 6)}
    assert not next(d for d in again if d.path == os.fsencode(tmp_path)).same
