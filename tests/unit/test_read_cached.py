"""The warm-cache readers (hashing.read.read_cached, and read_warm for a batch): what
they learn equals read_one's, they never read past the page cache, and they keep every
check of the slow path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import pytest
import xxhash

from dedupd import testpoints
from dedupd.files.events import Problem
from dedupd.hashing import Feeder, Stability
from dedupd.hashing.engine import read_many
from dedupd.hashing.read import (
    COLD_MISSES,
    HEAD_SIZE,
    Dirs,
    Got,
    read_cached,
    read_one,
    read_warm,
)
from dedupd.index.store import IndexedFile


def indexed(p: Path) -> IndexedFile:
    """p as a walk records it, its pages written back first: a read with RWF_NOWAIT
    (the warm readers') answers EAGAIN for a cached page locked while the flusher
    writes it back, which it does whenever it likes (sooner on a loaded machine), so
    a just-written file's cache hits were not certain."""
    if p.is_file() and not p.is_symlink():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    st = os.lstat(p)
    return IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                       None, None, 0, (os.fsencode(p),))


def evict(p: Path) -> None:
    """Drop the file's pages from the page cache (written back first: clean pages go)."""
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached(f: IndexedFile, full: bool) -> Got | Problem | None:
    dirs = Dirs()
    try:
        return read_cached(f, full, dirs)
    finally:
        dirs.close()


def test_a_warm_file_gives_what_read_one_gives(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    small.write_bytes(os.urandom(50_000))
    large.write_bytes(os.urandom(300_000))
    s, big = indexed(small), indexed(large)
    got = cached(s, True)
    assert got == read_one(s, True)
    assert got == Got(xxhash.xxh3_64_intdigest(small.read_bytes()[:HEAD_SIZE]),
                      xxhash.xxh3_128_digest(small.read_bytes()), 50_000)
    assert cached(big, False) == read_one(big, False) == Got(
        xxhash.xxh3_64_intdigest(large.read_bytes()[:HEAD_SIZE]), None, HEAD_SIZE)


def test_a_file_not_in_the_page_cache_is_left_to_the_prefetching_reader(
        tmp_path: Path) -> None:
    paths = [tmp_path / n for n in ("a", "b", "c")]
    for p in paths:
        p.write_bytes(os.urandom(20_000))
    files = [indexed(p) for p in paths]
    evict(paths[1])
    assert cached(files[1], True) is None
    out = list(read_many([(f, True) for f in files]))
    assert [j[0] for j, _ in out] == files
    assert [g for _, g in out] == [Got(xxhash.xxh3_64_intdigest(p.read_bytes()[:HEAD_SIZE]),
                                       xxhash.xxh3_128_digest(p.read_bytes()), 20_000)
                                   for p in paths]


def test_a_file_that_grew_or_was_replaced_since_the_walk_is_changed(tmp_path: Path) -> None:
    grew, swapped = tmp_path / "grew", tmp_path / "swapped"
    grew.write_bytes(b"x" * 1000)
    swapped.write_bytes(b"y" * 1000)
    g, s = indexed(grew), indexed(swapped)
    with open(grew, "ab") as fh:
        fh.write(b"more")
    (tmp_path / "other").write_bytes(b"y" * 1000)
    os.replace(tmp_path / "other", swapped)
    for f in (g, s):
        got = cached(f, True)
        assert isinstance(got, Problem) and got.reason == "changed", got


def test_a_symlink_in_the_files_place_is_not_followed(tmp_path: Path) -> None:
    target, name = tmp_path / "target", tmp_path / "name"
    target.write_bytes(b"z" * 1000)
    name.write_bytes(b"z" * 1000)
    f = indexed(name)
    name.unlink()
    name.symlink_to(target)
    got = cached(f, True)
    assert isinstance(got, Problem) and got.reason == "path_changed", got


def test_a_filesystem_without_nowait_reads_is_read_the_usual_way() -> None:
    # tmpfs refuses RWF_NOWAIT (EOPNOTSUPP): the file is read by the prefetching reader
    shm = Path("/dev/shm") / f"dedupd-test-{os.getpid()}"
    shm.write_bytes(b"q" * 5000)
    try:
        f = indexed(shm)
        [(_, got)] = list(read_many([(f, True)]))
        assert got == Got(xxhash.xxh3_64_intdigest(b"q" * HEAD_SIZE),
                          xxhash.xxh3_128_digest(b"q" * 5000), 5000)
    finally:
        shm.unlink()


def test_one_file_the_cache_lost_is_read_alone_and_the_rest_still_from_the_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a miss among cached files (a readahead mark left by another reader, an evicted
    # file) is read the slow way alone; misses in a row (a cold cache) prefetch
    from dedupd.hashing import engine

    paths = [tmp_path / f"f{i}" for i in range(8)]
    for p in paths:
        p.write_bytes(os.urandom(20_000))
    files = [indexed(p) for p in paths]
    tried: list[bytes] = []
    slow: list[bytes] = []
    cached_read, open_ahead = engine.read_cached, engine.open_ahead

    def counted(f: IndexedFile, full: bool, dirs: Dirs) -> Got | Problem | None:
        tried.append(f.path)
        return cached_read(f, full, dirs)

    def opened(f: IndexedFile, full: bool, dirs: Dirs | None = None) -> int | Problem:
        slow.append(f.path)
        return open_ahead(f, full, dirs)

    monkeypatch.setattr(engine, "read_cached", counted)
    monkeypatch.setattr(engine, "open_ahead", opened)
    want = [read_one(f, True) for f in files]
    evict(paths[1])
    assert [g for _, g in read_many([(f, True) for f in files])] == want
    assert slow == [files[1].path] and len(tried) == 8
    tried.clear()
    slow.clear()
    for p in paths:
        evict(p)
    assert [g for _, g in read_many([(f, True) for f in files])] == want
    assert len(tried) == engine.COLD_MISSES and len(slow) == 8


# read_warm: a batch's first reads directory by directory (the scan's feeders)


def tree(tmp_path: Path) -> dict[str, Path]:
    """Small files in two directories and a large one (read by its head)."""
    paths = {}
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        for n in ("a", "b"):
            p = paths[f"{d}/{n}"] = tmp_path / d / n
            p.write_bytes(os.urandom(3000 if n == "a" else 40_000))
    paths["big"] = tmp_path / "big"
    paths["big"].write_bytes(os.urandom(300_000))
    return paths


def test_read_warm_gives_what_read_one_gives(tmp_path: Path) -> None:
    files = [indexed(p) for p in tree(tmp_path).values()]
    jobs = [(f, f.size <= 128 * 1024, None) for f in files]
    jobs.append((files[-1], True, None))  # the large file's head, then whole
    got = read_warm(jobs)
    assert got == [read_one(f, full) for f, full, _ in jobs]
    assert all(isinstance(g, Got) for g in got)


def test_a_large_file_is_read_whole_when_its_start_is_cached(tmp_path: Path) -> None:
    # first MiB cached, the rest not: read whole here (the rest from the disk); its
    # first MiB not cached: left to read_many (its disk order); grown: left too
    paths = [tmp_path / n for n in ("tail", "cold", "grew")]
    for p in paths:
        p.write_bytes(os.urandom(3 << 20))
    files = [indexed(p) for p in paths]
    evict(paths[1])
    fd = os.open(paths[0], os.O_RDONLY)
    try:  # its pages are clean (indexed): these are dropped, not left to writeback
        os.posix_fadvise(fd, 2 << 20, 0, os.POSIX_FADV_DONTNEED)
        with pytest.raises(BlockingIOError):  # the rest is not cached indeed
            os.preadv(fd, (bytearray(4096),), 2 << 20, os.RWF_NOWAIT)
    finally:
        os.close(fd)
    with open(paths[2], "ab") as fh:
        fh.write(b"more")
    got = read_warm([(f, True, None) for f in files])
    assert got[0] == read_one(files[0], True) and got[0] is not None
    assert got[0].nread == 3 << 20
    assert got[1:] == [None, None]


def test_read_warm_refuses_a_name_swapped_or_changed_after_the_walk(tmp_path: Path) -> None:
    # between the walk (indexed) and the fast read: x/a becomes a symlink to a file
    # of the same bytes, y/a is rewritten (same size, new ctime), y/b is replaced by
    # another file, and directory x/.. stays: only the untouched file is read
    paths = tree(tmp_path)
    files = {k: indexed(p) for k, p in paths.items()}
    twin = tmp_path / "twin"
    twin.write_bytes(paths["x/a"].read_bytes())
    other = tmp_path / "other"
    other.write_bytes(paths["y/b"].read_bytes())

    def swap(_point: str, path: bytes) -> None:
        if path == os.fsencode(paths["x/a"]) and not paths["x/a"].is_symlink():
            paths["x/a"].unlink()
            paths["x/a"].symlink_to(twin)
        elif path == os.fsencode(paths["y/a"]):
            paths["y/a"].write_bytes(paths["y/a"].read_bytes())
        elif path == os.fsencode(paths["y/b"]) and other.exists():
            os.replace(other, paths["y/b"])

    keys = ["x/a", "x/b", "y/a", "y/b"]
    with testpoints.acting(("read.open",), swap):
        got = read_warm([(files[k], True, None) for k in keys])
    assert got[0] is None and got[2] is None and got[3] is None
    assert got[1] == read_one(files["x/b"], True)
    # the reader they go on to tells what happened: nothing is hashed
    assert [cast(Problem, read_one(files[k], True)).reason for k in ("x/a", "y/a", "y/b")] \
        == ["path_changed", "changed", "changed"]


def test_a_directory_swapped_for_a_symlink_is_not_entered(tmp_path: Path) -> None:
    paths = tree(tmp_path)
    files = [indexed(paths["x/a"]), indexed(paths["x/b"])]
    (tmp_path / "x").rename(tmp_path / "x2")
    (tmp_path / "x").symlink_to(tmp_path / "x2")
    assert read_warm([(f, True, None) for f in files]) == [None, None]


def test_the_feeder_reports_a_file_swapped_before_its_fast_read(tmp_path: Path) -> None:
    # three of one size: the one replaced by a symlink (to identical bytes) between
    # the walk and the read is reported, never hashed nor grouped
    data = os.urandom(5000)
    paths = [tmp_path / n for n in ("a", "b", "c")]
    for p in paths:
        p.write_bytes(data)
    files = [indexed(p) for p in paths]
    (tmp_path / "twin").write_bytes(data)

    def swap(_point: str, path: bytes) -> None:
        if path == os.fsencode(paths[1]) and not paths[1].is_symlink():
            paths[1].unlink()
            paths[1].symlink_to(tmp_path / "twin")

    feeder = Feeder(Stability(), 100)
    with testpoints.acting(("read.open",), swap):
        updates, gone = feeder.put(files)
    assert sorted(u.ino for u in updates) == sorted([files[0].ino, files[2].ino])
    [group] = feeder.groups()  # counters reach feeder.stats with the groups
    assert {f.ino for f in group.files} == {files[0].ino, files[2].ino}
    assert [p.reason for p in feeder.stats.problems] == ["path_changed"]


def test_read_warm_stops_on_a_cold_cache_and_the_feeder_reads_the_rest(
        tmp_path: Path) -> None:
    data = os.urandom(20_000)
    paths = [tmp_path / f"f{i}" for i in range(8)]
    for p in paths:
        p.write_bytes(data)
    files = [indexed(p) for p in paths]
    for p in paths:
        evict(p)
    tried: list[bytes] = []
    with testpoints.acting(("read.open",), lambda _p, path: tried.append(path)):
        assert read_warm([(f, True, None) for f in files]) == [None] * 8
    assert len(tried) == COLD_MISSES
    feeder = Feeder(Stability(), 100)
    updates, gone = feeder.put(files)
    assert len(updates) == 8 and not gone
    [group] = feeder.groups()
    assert not feeder.stats.problems and feeder.stats.full_hashes == 8
    assert len(group.files) == 8 and group.full == xxhash.xxh3_128_digest(data)


def test_read_warm_leaves_a_filesystem_without_nowait_reads_alone() -> None:
    shm = Path("/dev/shm") / f"dedupd-warm-{os.getpid()}"
    shm.write_bytes(b"q" * 5000)
    try:
        f = indexed(shm)
        [(_, got)] = list(read_many([(f, True)]))  # learns tmpfs refuses RWF_NOWAIT
        assert isinstance(got, Got)
        tried: list[bytes] = []
        with testpoints.acting(("read.open",), lambda _p, path: tried.append(path)):
            assert read_warm([(f, True, None)]) == [None]
        assert tried == []
    finally:
        shm.unlink()


def test_a_feeder_makes_no_reference_cycles(tmp_path: Path) -> None:
    # forked feeders run with the collector off (hashing.forked): whatever a feeder
    # learns, fails to read or lets go must be freed by reference counts alone
    import gc

    data, big = os.urandom(5000), os.urandom(300_000)
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        for n in ("a", "b", "c"):
            (tmp_path / d / n).write_bytes(data)
        (tmp_path / d / "big").write_bytes(big)
    (tmp_path / "y" / "big2").write_bytes(big[:-1] + b"!")  # same head, other bytes
    (tmp_path / "x" / "link").symlink_to(tmp_path / "x" / "a")
    files = [indexed(p) for p in sorted(tmp_path.glob("*/*")) if not p.is_symlink()]
    (tmp_path / "x" / "b").unlink()  # vanished
    (tmp_path / "y" / "c").write_bytes(data[::-1])  # changed
    (tmp_path / "y" / "a").unlink()
    (tmp_path / "y" / "a").symlink_to(tmp_path / "x" / "a")  # a symlink in its place
    gc.collect()
    gc.disable()
    try:
        feeder = Feeder(Stability(), 100)
        updates, gone = feeder.put(files[:4])
        more, gone2 = feeder.put(files[4:])
        groups = feeder.groups()
        assert len(groups) == 2 and len(gone + gone2) == 2, (groups, gone, gone2)
        assert {p.reason for p in feeder.stats.problems} == {"vanished", "changed",
                                                             "path_changed"}
        del feeder, updates, gone, more, gone2, groups
        assert gc.collect() == 0
    finally:
        gc.enable()
