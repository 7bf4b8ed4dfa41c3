"""Store.save_hashes keeps the hashes of an indexed inode whatever Store recorded it.

Before: a Store kept no update of a device it had not met itself (its st_dev ->
filesystem map is filled by record/fs_of); a process that only hashes (the
consolidation's index writer, a verify) dropped them silently, so the next pass
read the unchanged file again. Now the device is mapped on first sight through
the index's directories of this host's filesystems.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.files.events import FileEvent
from dedupd.index.store import HashUpdate, Store

pytestmark = pytest.mark.integration


def _hashes(url: str) -> list[tuple[int | None, bytes | None]]:
    s = Store(url)
    try:
        return [(r[0], None if r[1] is None else bytes(r[1]))
                for r in s.db.rows('SELECT head, "full" FROM inodes ORDER BY ino')]
    finally:
        s.close()


def _one_indexed_file(tmp_path: Path) -> tuple[str, os.stat_result]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    f = tmp_path / "d" / "f"
    f.parent.mkdir()
    f.write_bytes(b"x" * 10_000)
    st = os.stat(f)
    first = Store(url)
    try:
        first.record(first.begin_scan([os.fsencode(f.parent)]),
                     [FileEvent.from_stat(os.fsencode(f), st)])
    finally:
        first.close()
    return url, st


def test_a_store_that_never_met_the_device_saves_its_hashes(tmp_path: Path) -> None:
    url, st = _one_indexed_file(tmp_path)
    assert _hashes(url) == [(None, None)]

    other = Store(url)  # a process of its own: it never recorded anything
    try:
        assert other.fsmap.known_fs(st.st_dev) is None
        other.save_hashes([HashUpdate(st.st_dev, st.st_ino, 7, b"h" * 16,
                                      (st.st_size, st.st_mtime_ns, st.st_ctime_ns))])
        assert other.fsmap.known_fs(st.st_dev) is not None
    finally:
        other.close()
    assert [h[1] for h in _hashes(url)] == [b"h" * 16]


def test_hashes_of_a_device_nothing_indexes_are_skipped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    f = tmp_path / "f"
    f.write_bytes(b"y")
    st = os.stat(f)
    s = Store(url)
    try:
        s.save_hashes([HashUpdate(st.st_dev, st.st_ino, 1, b"h" * 16)])  # no error
        s.save_hashes([HashUpdate(st.st_dev, st.st_ino, 1, b"h" * 16)])  # nor probe again
        assert s.db.rows("SELECT count(*) FROM inodes")[0][0] == 0
    finally:
        s.close()


def test_keys_of_a_device_not_met_yet_are_found(tmp_path: Path) -> None:
    """key_of (forget, accept_own_ctimes, extent state) maps a device it has not met
    as save_hashes does: before, it answered None, so a Store that had recorded
    nothing (a `dedupd run` resuming, the consolidation's writer) forgot nothing and
    kept stale ctimes without a word."""
    url, st = _one_indexed_file(tmp_path)
    other = Store(url)
    try:
        assert other.key_of(st.st_dev, st.st_ino) is not None
        other.forget([(st.st_dev, st.st_ino)])
        assert other.db.rows("SELECT count(*) FROM inodes")[0][0] == 0
    finally:
        other.close()


def test_a_device_nothing_indexes_is_looked_for_once(tmp_path: Path) -> None:
    url, st = _one_indexed_file(tmp_path)
    s = Store(url)
    try:
        queries: list[str] = []
        s.db.conn().set_trace_callback(queries.append)
        stranger = st.st_dev + 1  # no filesystem of the index is on it
        assert s.key_of(stranger, 1) is None
        n = len(queries)
        assert n > 0
        assert [s.key_of(stranger, i) for i in range(2, 50)] == [None] * 48
        assert len(queries) == n  # until the next pass (prepare_scan) looks again
    finally:
        s.close()
