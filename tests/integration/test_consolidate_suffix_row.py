"""A copy placed under a suffix because its planned name appeared in the archive
during the run keeps its provenance row.

Before: the run's sweep of rows naming files no longer in the archive
(provenance.forget_archive_paths) kept the archive files found by the walk and
the copies' PLANNED names; a copy the worker had placed under "name (2)" since
was swept at the end of the very run that wrote its row (`dedupd where` and the
rows said nothing of it until a later run rebuilt the row from the files).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index import provenance as prov
from dedupd.index.store import Store
from tests.fixtures.consolidate import write

pytestmark = pytest.mark.integration


def test_a_copy_moved_to_a_suffix_mid_run_keeps_its_row(tmp_path: Path) -> None:
    src, archive = tmp_path / "src", tmp_path / "archive"
    archive.mkdir()
    write(src / "a.txt", b"a" * 5000, "2014-04-04")
    cfg = ConsolidateConfig("c", (src,), archive)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        consolidate(store, cfg, Options())  # rows exist: the next run sweeps
        data = {"b": b"b" * 6000, "c": b"c" * 6001}  # sizes of their own: read one by one
        for n in "bc":  # two new contents: the 2nd is read after the 1st is named
            write(src / f"{n}.txt", data[n], "2015-05-05")
        month = archive / "2015" / "05"

        def progress(done: int, _total: int, _b: int, _bt: int) -> None:
            # the first copy is named (its name was free) and staged, not placed yet:
            # both names appear now, as another program's files
            if done == 1 and not (month / "b.txt").exists():
                for n in "bc":
                    write(month / f"{n}.txt", b"someone else's\n")

        rep = consolidate(store, cfg, Options(copy_progress=progress))
        assert rep.stats["files_copied"] == 2
        # the report names where each copy is, not where it was planned
        assert sorted(c["archive"] for c in rep.as_json()["copies"]) == \
            [str(month / "b (2).txt"), str(month / "c (2).txt")]
        for n in "bc":
            placed = month / f"{n} (2).txt"
            assert placed.read_bytes() == data[n]
            rows = prov.archive_of(store, os.fsencode(src / f"{n}.txt"))
            assert [r.archive_path for r in rows] == [os.fsencode(placed)]
        assert [r.archive_path for r in prov.archive_of(store, os.fsencode(src / "a.txt"))] \
            == [os.fsencode(archive / "2014" / "04" / "a.txt")]
    finally:
        store.close()
