"""Two contents whose archive names collide at the longest names a filesystem takes.

Before: the second got " (2)" added to a 252-255 byte name, its link failed with
ENAMETOOLONG and the run exited 1 at every run, never importing it. Now the stem
is shortened so the suffixed name fits NAME_MAX (255 bytes), at a character
boundary, the extension kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.layout import NAME_MAX, with_suffix
from dedupd.consolidate.run import Options, consolidate
from dedupd.index.store import Store
from tests.fixtures.consolidate import write

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stem", ["a" * 251, "é" * 125 + "b"])
def test_colliding_names_at_name_max_are_all_imported(tmp_path: Path, stem: str) -> None:
    name = stem + ".jpg"
    assert len(name.encode()) == 255
    shares = [tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"]
    for i, share in enumerate(shares):
        write(share / name, bytes([65 + i]) * (4000 + i), "2016-06-06")
    archive = tmp_path / "archive"
    archive.mkdir()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        cfg = ConsolidateConfig("c", tuple(shares), archive)
        rep = consolidate(store, cfg, Options())
        assert rep.problems == ()
        assert rep.stats["files_copied"] == 3
        month = archive / "2016" / "06"
        got = sorted(os.listdir(os.fsencode(month)))
        assert len(got) == 3 and all(len(n) <= NAME_MAX for n in got)
        for n in got:
            n.decode()  # cut at a character boundary: still UTF-8
            assert n.endswith(b".jpg")
        contents = sorted((month / os.fsdecode(n)).read_bytes()[:1] for n in got)
        assert contents == [b"A", b"B", b"C"]
        again = consolidate(store, cfg, Options())  # nothing left to import
        assert again.stats["files_copied"] == 0 and again.problems == ()
    finally:
        store.close()


def test_with_suffix_fits_name_max() -> None:
    assert with_suffix(b"2021/05/a.jpg", 2) == b"2021/05/a (2).jpg"
    long = b"x" * 250 + b".jpeg"
    assert with_suffix(b"d/" + long, 12) == b"d/" + b"x" * 245 + b" (12).jpeg"
    # an extension longer than the room left: the name is cut as a whole
    odd = b"s." + b"e" * 253
    got = with_suffix(odd, 3)
    assert len(got) == NAME_MAX and got.endswith(b" (3)")
