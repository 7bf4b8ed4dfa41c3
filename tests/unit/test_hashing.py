"""Hasher: counters reach the shared stats with one reader thread or several."""

from __future__ import annotations

import os
from pathlib import Path

from dedupd.hashing import Hasher, HashStats, Stability
from dedupd.index.store import IndexedFile


def indexed(p: Path) -> IndexedFile:
    st = os.stat(p)
    return IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                       None, None, 0, (os.fsencode(p),))


def three(tmp_path: Path) -> list[IndexedFile]:
    data = os.urandom(200_000)
    files = []
    for n in "abc":
        (tmp_path / n).write_bytes(data)
        files.append(indexed(tmp_path / n))
    return files


def test_serial_path_reports_vanished_files(tmp_path: Path) -> None:
    files = three(tmp_path)
    os.unlink(tmp_path / "a")
    stats = HashStats()
    [res] = Hasher(Stability(), stats, workers=1).run([files])
    assert [p.reason for p in stats.problems] == ["vanished"]
    assert len(res.groups) == 1 and len(res.groups[0].files) == 2
    assert res.gone == (files[0].key,)
    assert stats.files_hashed == 3 and stats.full_hashes == 2


def test_parallel_path_gives_every_group_and_counts(tmp_path: Path) -> None:
    groups = []
    for k in range(20):
        d = tmp_path / str(k)
        d.mkdir()
        groups.append(three(d))
    stats = HashStats()
    out = list(Hasher(Stability(), stats, workers=3).run(groups))
    assert sorted(f.key for r in out for f in r.groups[0].files) == sorted(
        f.key for g in groups for f in g)
    assert len(out) == 20 and all(len(r.groups) == 1 for r in out)
    assert stats.files_hashed == 60 and stats.bytes_hashed == 60 * 200_000


def test_unsettled_files_wait_and_back_off(tmp_path: Path) -> None:
    f = three(tmp_path)[0]
    stab = Stability(settle_seconds=300, max_backoff_seconds=3600)
    changed = max(f.mtime_ns, f.ctime_ns) / 1e9
    assert not stab.ready(f, changed + 299)
    assert stab.ready(f, changed + 300)
    twice = IndexedFile(*[getattr(f, n) for n in ("dev", "ino", "size", "mtime_ns", "ctime_ns",
                                                   "head", "full")], 2, f.paths)
    assert not stab.ready(twice, changed + 1199) and stab.ready(twice, changed + 1200)
    many = IndexedFile(*[getattr(f, n) for n in ("dev", "ino", "size", "mtime_ns", "ctime_ns",
                                                  "head", "full")], 40, f.paths)
    assert stab.ready(many, changed + 3600)  # capped at max_backoff
