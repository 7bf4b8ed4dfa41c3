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


def _with(f: IndexedFile, head: int | None, full: bytes | None) -> IndexedFile:
    return f._replace(head=head, full=full)


def test_settled_apart_only_where_hashing_would_read_and_group_nothing(
        tmp_path: Path) -> None:
    """settled_apart (a re-run passes such size groups by, issue 16) holds exactly
    when the hasher, given the same members, reads nothing and groups nothing."""
    from dedupd.hashing.rule import settled_apart

    same = os.urandom(200_000)
    for n, data in (("a", same), ("b", same), ("c", same[:-1] + b"!")):
        (tmp_path / n).write_bytes(data)
    a, b, c = (indexed(tmp_path / n) for n in "abc")
    # what a first pass learns: every head (c's equals a's and b's), then the wholes
    first = Hasher(Stability(), HashStats(), workers=1).run([[a, b, c]])
    [res] = list(first)
    learnt = {(u.dev, u.ino): u for g in res.groups for u in g.updates} | {
        (u.dev, u.ino): u for u in res.updates}
    a, b, c = (_with(f, learnt[f.key].head, learnt[f.key].full) for f in (a, b, c))
    assert a.head == b.head == c.head and a.full == b.full != c.full

    def hashes_nothing(group: list[IndexedFile]) -> bool:
        stats = HashStats()
        out = list(Hasher(Stability(), stats, workers=1).run([group]))
        return stats.files_hashed == 0 and not any(r.groups for r in out)

    cases = {
        "heads apart": ([_with(a, 1, None), _with(c, 2, None)], True),
        "two names of one inode": ([_with(a, 1, None), _with(a, 1, None)], True),
        "a head unknown": ([_with(a, 1, None), _with(c, None, None)], False),
        "heads shared, wholes unknown": ([_with(a, a.head, None), _with(b, b.head, None)],
                                         False),
        "heads shared, wholes known": ([a, c], False),
    }
    for name, (group, apart) in cases.items():
        assert settled_apart(group) is apart, name
        if apart:
            assert hashes_nothing(group), name
    assert not hashes_nothing([_with(a, a.head, None), _with(b, b.head, None)])
    small = [indexed(tmp_path / n) for n in "de" if (tmp_path / n).write_bytes(n.encode())]
    assert settled_apart([_with(small[0], None, b"1"), _with(small[1], None, b"2")])
    assert not settled_apart([_with(small[0], None, b"1"), _with(small[1], None, b"1")])
    assert not settled_apart([_with(small[0], None, b"1"), _with(small[1], 7, None)])
