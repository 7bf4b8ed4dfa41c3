"""Config options of a consolidation: include/exclude, collisions, undated, layout errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index.store import Store
from tests.fixtures.consolidate import archive_files, dedupd, jpeg, write, write_config

pytestmark = pytest.mark.integration


def run(tmp: Path, cfg: ConsolidateConfig) -> dict:  # type: ignore[type-arg]
    store = Store(f"sqlite:///{tmp / 'db.sqlite'}")
    try:
        return consolidate(store, cfg, Options()).as_json()
    finally:
        store.close()


def rel(archive: Path) -> set[str]:
    return {os.path.relpath(os.fsdecode(p), archive) for p in archive_files(archive)}


def test_include_exclude_skip_collisions_and_undated(tmp_path: Path) -> None:
    src, archive = tmp_path / "src", tmp_path / "archive"
    archive.mkdir()
    write(src / "a/IMG_1.jpg", jpeg((1, 1, 1), "2020:02:02 02:02:02"), "2021-01-01")
    write(src / "b/IMG_1.jpg", jpeg((2, 2, 2), "2020:02:20 02:02:02"), "2021-01-01")
    write(src / "c/plain.jpg", jpeg((3, 3, 3), None), "2019-09-09")  # no EXIF date
    write(src / "notes.txt", b"not a photo\n", "2019-09-09")
    write(src / "Thumbs.db", b"thumbs", "2019-09-09")
    cfg = ConsolidateConfig("o", (src,), archive, layout="{year}/{name}",
                            date_from=("exif",), include=("*.jpg", "*.db"),
                            exclude=("Thumbs.db",), on_name_collision="skip",
                            undated_dir="no-date")
    rep = run(tmp_path, cfg)
    assert rel(archive) == {"2020/IMG_1.jpg", "no-date/plain.jpg"}
    assert [(os.path.relpath(p["path"], src), p["reason"]) for p in rep["problems"]] == [
        ("b/IMG_1.jpg", "name-collision")]
    assert rep["stats"]["excluded"] >= 2  # notes.txt (not included), Thumbs.db (excluded)


def test_bad_layout_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "a").mkdir()
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "x", [tmp_path / "s"],
                       tmp_path / "a", 'layout = "{year}/{lens}/{name}"\n')
    r = dedupd("consolidate", "-c", str(cfg), "x", check=False)
    assert r.returncode == 78
    assert f"{cfg}: consolidate.x.layout: unknown placeholder {{lens}}" in r.stderr.decode()
    overlap = write_config(tmp_path / "o.toml", tmp_path / "db.sqlite", "x", [tmp_path],
                           tmp_path / "a")
    r = dedupd("consolidate", "-c", str(overlap), "x", check=False)
    assert r.returncode == 78 and b"overlap" in r.stderr
