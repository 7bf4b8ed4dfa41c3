"""The warm-cache reader (hashing.read.read_cached): what it learns equals read_one's,
it never reads past the page cache, and it keeps every check of the slow path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from dedupd.files.events import Problem
from dedupd.hashing.engine import read_many
from dedupd.hashing.read import HEAD_SIZE, Dirs, Got, read_cached, read_one
from dedupd.index.store import IndexedFile


def indexed(p: Path) -> IndexedFile:
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
