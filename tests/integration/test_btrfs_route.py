"""Hashing for extent volumes (dedupd.hashing.engine): heads, then whole files in disk
order, in windows; groups are handed to the dedupe as their reads complete.

Every hash the index ends up with is the true hash of the file's bytes, whatever
the window size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import xxhash

from dedupd.hashing import HashStats, Stability, engine
from dedupd.index import extents as ix
from dedupd.index.store import IndexedFile, Store
from tests.fixtures.components import require_tools
from tests.integration.extent_helpers import (
    BLOCK,
    btrfs_data_bytes,
    copy_fresh,
    digests,
    run_pass,
    sync_fs,
    write_random,
)

pytestmark = pytest.mark.integration
MountFactory = Callable[[str, str], Path]


@pytest.fixture
def vol(loopfs: MountFactory) -> Path:
    require_tools("btrfs")
    return loopfs("btrfs", "1G")


def _indexed_full(store: Store, p: Path) -> bytes | None:
    st = os.stat(p)
    return ix.full_hash(store, (st.st_dev, st.st_ino))


def _true_full(p: Path) -> bytes:
    return xxhash.xxh3_128(p.read_bytes()).digest()


def test_same_head_different_tail_is_never_merged(vol: Path, store: Store) -> None:
    data = write_random(vol / "a.jpg", 300 * BLOCK, 5)
    (vol / "b.jpg").write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    before = digests(vol)
    _, disk0 = btrfs_data_bytes(vol)
    r = run_pass(store, vol)
    c = r.counters
    assert not c.get("tries") and not c.get("hits") and not c.get("groups")
    assert c["bytes_read"] == 2 * (300 * BLOCK + 4096)  # heads equal: both read whole
    assert digests(vol) == before and btrfs_data_bytes(vol)[1] == disk0
    for name in ("a.jpg", "b.jpg"):
        assert _indexed_full(store, vol / name) == _true_full(vol / name)
    again = run_pass(store, vol, force_rescan=True)
    assert again.counters.get("bytes_read", 0) == 0 and not again.counters.get("tries")


@pytest.mark.parametrize("window", [1, 1 << 30])
def test_two_contents_behind_one_head_are_split_and_both_deduped(
        vol: Path, store: Store, window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "WINDOW_BYTES", window)
    size = 200 * BLOCK
    a = write_random(vol / "a0.jpg", size, 7)
    b = a[:BLOCK * 100] + write_random(vol / "tmp", size - BLOCK * 100, 8)
    (vol / "tmp").unlink()
    for k in (1, 2):
        copy_fresh(vol / "a0.jpg", vol / f"a{k}.jpg")
    (vol / "b0.jpg").write_bytes(b)
    copy_fresh(vol / "b0.jpg", vol / "b1.jpg")
    before = digests(vol)
    _, disk0 = btrfs_data_bytes(vol)
    r = run_pass(store, vol)
    c = r.counters
    assert c["hits"] == 3 and c["groups"] == 2 and not r.problems
    assert digests(vol) == before
    assert disk0 - btrfs_data_bytes(vol)[1] == 3 * size  # a1, a2 and b1
    for p in sorted(vol.glob("*.jpg")):
        assert _indexed_full(store, p) == _true_full(p), p
    again = run_pass(store, vol, force_rescan=True)
    assert again.counters.get("bytes_read", 0) == 0 and again.actions == ()
    assert again.counters.get("skips_done") == 3


def test_a_new_copy_meets_the_remembered_reference(vol: Path, store: Store) -> None:
    write_random(vol / "a0.jpg", 64 * BLOCK, 9)
    copy_fresh(vol / "a0.jpg", vol / "a1.jpg")
    first = run_pass(store, vol)
    assert first.counters["hits"] == 1
    copy_fresh(vol / "a0.jpg", vol / "a2.jpg")
    r = run_pass(store, vol)
    # Known hashes: the new file alone is read (head, then whole) and deduped
    # against the remembered reference; the other copy is skipped as done.
    assert r.counters["hits"] == 1 and r.counters.get("skips_done") == 1
    assert r.counters["bytes_read"] == 64 * BLOCK + 4096
    assert _indexed_full(store, vol / "a2.jpg") == _true_full(vol / "a0.jpg")


def test_groups_of_many_sizes_across_windows(vol: Path, store: Store,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows smaller than one group's bytes, several groups per window, and size
    groups without duplicates in between: every group is found exactly once."""
    monkeypatch.setattr(engine, "WINDOW_BYTES", 100 * BLOCK)
    dup = 0
    for g in range(9):
        size = (20 + 7 * g) * BLOCK
        write_random(vol / f"g{g}" / "0.jpg", size, 100 + g)
        write_random(vol / f"g{g}" / "lonely.jpg", size, 200 + g)  # same size, other head
        for k in range(1, 1 + g % 3 + 1):
            copy_fresh(vol / f"g{g}" / "0.jpg", vol / f"g{g}" / f"{k}.jpg")
            dup += size
    _, disk0 = btrfs_data_bytes(vol)
    r = run_pass(store, vol)
    assert r.counters["groups"] == 9 and not r.problems
    assert disk0 - btrfs_data_bytes(vol)[1] == dup


def test_whole_files_are_read_in_disk_order(vol: Path, store: Store,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies written in reverse order lie on disk in reverse order: the second stage
    reads them by their first block, not by size or name."""
    for g in range(6):
        write_random(vol / f"o{g}.jpg", (40 + g) * BLOCK, 300 + g)  # > WHOLE_READ
    for g in reversed(range(6)):
        copy_fresh(vol / f"o{g}.jpg", vol / f"c{g}.jpg")
    order: list[tuple[int, int, int]] = []
    real = engine.read_one

    def spy(f: IndexedFile, full: bool, *a: object) -> object:
        if full:
            order.append(engine.on_disk(f))
        return real(f, full, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "read_one", spy)
    monkeypatch.setattr(engine, "WINDOW_BYTES", 1 << 30)
    monkeypatch.setattr(engine, "READERS", 1)  # reads happen in the order they are handed out
    sync_fs(vol)  # written data gets its disk addresses (delayed allocation)
    r = run_pass(store, vol, min_size=BLOCK)
    assert r.counters["hits"] == 6 and len(order) == 12
    # One window: disk order (size order would read c0 second, not last).
    assert all(k[1] > 0 for k in order)
    assert order == sorted(order)


def test_closing_early_drops_the_reads_not_started(vol: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    groups = []
    for g in range(8):
        write_random(vol / f"o{g}.jpg", (40 + g) * BLOCK, 400 + g)
        copy_fresh(vol / f"o{g}.jpg", vol / f"c{g}.jpg")
    sync_fs(vol)
    for g in range(8):
        files = []
        for name in (f"o{g}.jpg", f"c{g}.jpg"):
            st = os.stat(vol / name)
            files.append(IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                     st.st_ctime_ns, None, None, 0,
                                     (os.fsencode(vol / name),)))
        groups.append(files)
    reads: list[bytes] = []
    real = engine.read_one
    gate = threading.Event()

    def spy(f: IndexedFile, full: bool, *a: object) -> object:
        if full:
            reads.append(f.path)
            if len(reads) == 3:
                gate.wait(10)  # the first task is in progress when the route is closed
        return real(f, full, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "read_one", spy)
    r = engine.Hasher(Stability(), HashStats(), workers=1, window=1 << 30)
    it = r.run(groups)
    first = next(it)  # disk order o0, c0, o1, ...: two reads complete the first group
    assert len(first.groups) == 1 and len(first.groups[0].files) == 2
    threading.Timer(0.2, gate.set).start()
    it.close()
    # The task in progress (up to CHUNK_BYTES of files: 6 here) finishes; the
    # 10 other reads never start.
    assert len(reads) <= 6


def test_heads_are_read_in_inode_order_across_size_groups(vol: Path, store: Store,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Small files (read whole in the first stage) written largest first: the reads
    follow the inode numbers, not the sizes the index hands the groups out by."""
    for g in reversed(range(6)):
        write_random(vol / f"s{g}.jpg", (4 + g) * BLOCK, 500 + g)
        copy_fresh(vol / f"s{g}.jpg", vol / f"t{g}.jpg")
    inos: list[int] = []

    def spy(real: Any) -> Any:
        def read(f: IndexedFile, full: bool, *a: object) -> object:
            got = real(f, full, *a)
            if got is not None:  # read_cached's None: not read (not in the page cache)
                inos.append(f.ino)
            return got
        return read

    # a read from the page cache (read_cached) or, when it misses, by read_one
    monkeypatch.setattr(engine, "read_one", spy(engine.read_one))
    monkeypatch.setattr(engine, "read_cached", spy(engine.read_cached))
    monkeypatch.setattr(engine, "READERS", 1)
    r = run_pass(store, vol, min_size=BLOCK)
    assert r.counters["hits"] == 6 and len(inos) == 12
    assert inos == sorted(inos)
