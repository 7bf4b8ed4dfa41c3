"""A hash is never the last word: a source whose index row claims the hash of
archive content (a forged row standing in for an XXH3 collision) but whose bytes
differ is imported as content of its own, and its row is corrected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.files.events import FileEvent
from dedupd.hashing import read_hashes
from dedupd.index.store import HashUpdate, IndexedFile, Store
from tests.fixtures.consolidate import archive_files, sha, write

pytestmark = pytest.mark.integration


def indexed(path: Path) -> IndexedFile:
    st = os.stat(path)
    return IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                       None, None, 0, (os.fsencode(path),))


@pytest.mark.parametrize("where", ["archive", "sources"])
def test_forged_hash_does_not_hide_content(tmp_path: Path, where: str) -> None:
    src, archive = tmp_path / "src", tmp_path / "archive"
    archive.mkdir()
    write(src / "a.bin", b"A" * 10_000, "2020-01-01")
    cfg = ConsolidateConfig("c", (src,), archive)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        if where == "archive":  # the twin arrives after 'a' is already archived
            consolidate(store, cfg, Options())
        write(src / "b.bin", b"B" * 10_000, "2020-01-01")  # same size, other bytes
        got = read_hashes(indexed(src / "a.bin"), True)
        head, full = got.head, got.full
        b = indexed(src / "b.bin")
        scan = store.begin_scan([os.fsencode(src)])
        store.record(scan, [FileEvent.from_stat(b.path, os.stat(b.path))])
        store.save_hashes([HashUpdate(b.dev, b.ino, head, full)])  # the forged row

        rep = consolidate(store, cfg, Options()).as_json()
        assert ("b.bin", "hash-collision") in {(os.path.basename(p["path"]), p["reason"])
                                               for p in rep["problems"]}
        contents = set(archive_files(archive).values())
        assert contents == {sha(os.fsencode(src / "a.bin")), sha(os.fsencode(src / "b.bin"))}
        # the copy's verified hash replaced the forged row: the next run is quiet
        again = consolidate(store, cfg, Options())
        assert again.stats["files_copied"] == 0 and again.stats["problems"] == 0
    finally:
        store.close()
