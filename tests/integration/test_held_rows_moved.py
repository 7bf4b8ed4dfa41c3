"""A scan holds new inode rows a few record batches in memory (index/held.py) so that
their hashes go in with them. A directory moved during the scan, after the walk
listed it and the feeders read its files, is listed again under its new name in a
later batch: its files are the same inodes at the same stat. The later batch must
find their rows (held, not yet written): recorded once, as new once, with the
hashes the feeders read, so that the next scan reads nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dedupd import testpoints
from dedupd.scan.walk import RECORD_BATCH as BATCH
from tests.integration.test_attack_rescan import blob, put, reported, run_scan, truth

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("feeders", [0, 2])
def test_a_directory_moved_between_walk_batches_is_recorded_once_with_its_hashes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, feeders: int) -> None:
    from dedupd.scan import prehash

    monkeypatch.setattr(prehash, "FEED_PROCS", feeders)  # in a thread here, or forked
    root, db = tmp_path / "t", tmp_path / "db"
    (root / "p").mkdir(parents=True)
    (root / "q").mkdir()
    # the walk takes a directory's subdirectories last listed first
    first, second = reversed(os.listdir(root))
    for i in range(BATCH + 100):  # the walk sends a batch while it lists these
        put(root / second / f"s{i}", b"%d" % i)
    (root / second / "sub").mkdir()  # walked after that batch went
    f = put(root / first / "d" / "f", blob("x"))
    g = put(root / first / "d" / "g", blob("x"))
    last = max((f, g), key=lambda p: p.stat().st_ino)  # read in inode order
    read, moved = tmp_path / "read", tmp_path / "moved"  # hooks run in forked processes

    def act(point: str, path: bytes) -> None:
        if point == "read.open" and path == bytes(last):
            read.write_bytes(b"")
        elif point == "walk.subdir" and path == bytes(root / second / "sub") \
                and not moved.exists():
            t = time.monotonic()  # until the feeders have read f and g
            while not read.exists() and time.monotonic() - t < 30:
                time.sleep(0.01)
            time.sleep(0.2)  # the second read's open came: let it finish
            os.rename(root / first / "d", root / second / "sub" / "d")
            moved.write_bytes(b"")

    with testpoints.acting(("walk.subdir", "read.open"), act):
        rep = run_scan(root, db)
    assert moved.exists() and read.exists()
    inodes = BATCH + 100 + 2
    assert rep.stats["files_seen"] == inodes + 2  # f and g listed under both names
    assert rep.stats["files_new"] == inodes, rep.stats
    again = run_scan(root, db)
    assert reported(again) == truth(root)
    assert (again.stats["bytes_read"], again.stats["files_new"]) == (0, 0), again.stats
