"""`dedupd consolidate` and `dedupd where` against three real source trees and an
archive on a zfs-fuse dataset."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.consolidate import (
    archive_files,
    corrupt_jpeg,
    dedupd,
    jpeg,
    manifest,
    sha,
    write,
    write_config,
)

pytestmark = pytest.mark.integration

PHOTO = jpeg((200, 30, 30), "2019:07:14 10:20:30")
OTHER = jpeg((30, 200, 30), "2018:12:24 18:00:00")
NOEXIF = jpeg((30, 30, 200), None)
LATIN1 = b"caf\xe9 cr\xe8me.txt"


def build_sources(base: Path) -> list[Path]:
    """Three overlapping shares. Returns their roots in config order."""
    s1, s2, s3 = base / "backup-disk", base / "backup-disk1", base / "old-laptop"
    # The same photo under three names and three mtimes: imported once, by EXIF date.
    write(s1 / "DCIM/IMG_0001.JPG", PHOTO, "2020-01-15")
    write(s2 / "photos/holiday.jpg", PHOTO, "2021-03-10")
    write(s3 / "Pictures/IMG_0001 copy.JPG", PHOTO, "2022-06-01")
    write(s2 / "photos/xmas.jpg", OTHER, "2019-01-02")  # already in the archive (renamed)
    write(s1 / "DCIM/noexif.jpg", NOEXIF, "2017-05-20")  # no EXIF: mtime decides
    write(s3 / "broken.jpg", corrupt_jpeg(), "2016-08-09")  # corrupt EXIF: mtime decides
    write(os.path.join(os.fsencode(s3), LATIN1), b"not utf-8 names survive\n" * 50,
          "2015-02-03")
    # Same name, different content, same month: the second gets a suffix.
    write(s1 / "docs/readme.txt", b"first readme\n" * 100, "2014-04-04")
    write(s2 / "readme.txt", b"second readme\n" * 100, "2014-04-05")
    write(s3 / "docs/readme.txt", b"first readme\n" * 100, "2023-09-09")  # = s1's
    write(s1 / "big.bin", os.urandom(3 << 20), "2013-03-03", mode=0o600)
    os.link(s1 / "big.bin", s1 / "big-hardlink.bin")
    write(s2 / "empty.txt", b"")  # empty files are not imported
    return [s1, s2, s3]


def expected_archive(archive: Path) -> dict[bytes, bytes]:
    """archive-relative path -> content, for the contents imported from build_sources."""
    a = os.fsencode(archive)

    def p(rel: bytes) -> bytes:
        return os.path.join(a, rel)

    return {
        p(b"2019/07/IMG_0001.JPG"): PHOTO,
        p(b"2017/05/noexif.jpg"): NOEXIF,
        p(b"2014/04/readme.txt"): b"first readme\n" * 100,
        p(b"2014/04/readme (2).txt"): b"second readme\n" * 100,
        p(b"2015/02/" + LATIN1): b"not utf-8 names survive\n" * 50,
    }


def seed_archive(archive: Path) -> None:
    write(archive / "old/renamed-xmas.jpg", OTHER, "2019-01-02")
    write(archive / "old/dup-a.dat", b"archive dup\n" * 500, "2012-01-01")
    write(archive / "old/dup-b.dat", b"archive dup\n" * 500, "2012-01-01")


def run_json(*args: str | bytes, env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    return json.loads(dedupd(*args, "--json", env=env).stdout)


def test_consolidate_end_to_end(tmp_path: Path, zfs_archive: Callable[[str], Path]) -> None:
    archive = zfs_archive("archive")
    sources = build_sources(tmp_path / "shares")
    seed_archive(archive)
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "photos", sources,
                       archive, 'exclude = ["*.tmp"]\n')
    before = {s: manifest(s) for s in sources}

    dry = run_json("consolidate", "-c", str(cfg), "photos", "--dry-run")
    assert dry["dry_run"] and dry["stats"]["files_copied"] == 0
    assert len(archive_files(archive)) == 3  # the seed only: a dry run writes nothing
    assert [a["result"] for a in dry["actions"]] == ["would"]  # the link it would make
    assert os.stat(archive / "old/dup-a.dat").st_nlink == 1

    rep = run_json("consolidate", "-c", str(cfg), "photos")
    assert {s: manifest(s) for s in sources} == before  # sources untouched
    files = archive_files(archive)
    src_contents = {sha(p) for s in sources for p, v in manifest(s).items() if v[-1]
                    and v[1] > 0}
    counts = Counter(files.values())
    for digest in src_contents:  # every distinct source content exactly once
        assert counts[digest] == 1, digest
    big = sha(os.path.join(os.fsencode(sources[0]), b"big.bin"))
    for path, content in expected_archive(archive).items():
        assert files.get(path) == sha_bytes(content), path
    broken = [p for p in files if p.endswith(b"/broken.jpg")]
    assert broken == [os.fsencode(archive / "2016/08/broken.jpg")]
    bigs = [p for p, d in files.items() if d == big]
    # one inode, two names: imported once, from the first path in path order
    assert bigs == [os.fsencode(archive / "2013/03/big-hardlink.bin")]
    st = os.stat(bigs[0])
    assert oct(st.st_mode & 0o777) == oct(0o600)  # permissions kept
    assert st.st_mtime_ns == os.stat(sources[0] / "big.bin").st_mtime_ns  # mtime kept
    assert not any(b".dedupd-copy." in p for p in manifest(archive))
    assert rep["stats"]["files_copied"] == 7 and rep["stats"]["already_in_archive"] == 1
    assert rep["stats"]["archive_duplicate_groups"] == 1
    # duplicates already in the archive were hardlinked by the linker (journalled)
    dup_a, dup_b = os.stat(archive / "old/dup-a.dat"), os.stat(archive / "old/dup-b.dat")
    assert dup_a.st_ino == dup_b.st_ino and dup_a.st_nlink == 2
    assert rep["stats"]["archive_names_linked"] == 1
    assert [a["result"] for a in rep["actions"]] == ["done"]

    # where: archive -> sources, and source -> archive (also for an already-archived file)
    w = run_json("where", "-c", str(cfg), str(archive / "2019/07/IMG_0001.JPG"))
    assert w["role"] == "archive"
    assert sorted(x["source"] for x in w["sources"]) == sorted(
        os.fsdecode(s / r) for s, r in zip(sources, ["DCIM/IMG_0001.JPG",
                                                     "photos/holiday.jpg",
                                                     "Pictures/IMG_0001 copy.JPG"],
                                           strict=True))
    w = run_json("where", "-c", str(cfg), str(sources[1] / "photos/xmas.jpg"))
    assert w["role"] == "source"
    assert [x["archive"] for x in w["archive"]] == [str(archive / "old/renamed-xmas.jpg")]
    w = run_json("where", "-c", str(cfg), os.path.join(os.fsencode(sources[2]), LATIN1))
    assert [x["archive"] for x in w["archive"]] == [
        os.fsdecode(os.path.join(os.fsencode(archive), b"2015/02/" + LATIN1))]
    assert dedupd("where", "-c", str(cfg), str(tmp_path), check=False).returncode == 1
    # a file not imported by path (here: outside the shares) is found by its content
    write(tmp_path / "stray.jpg", PHOTO)
    w = run_json("where", "-c", str(cfg), str(tmp_path / "stray.jpg"))
    assert w["by_content"] and [x["archive"] for x in w["archive"]] == [
        str(archive / "2019/07/IMG_0001.JPG")]

    # A second run copies nothing and reads nothing: all sources are unchanged.
    again = run_json("consolidate", "-c", str(cfg), "photos")
    assert again["stats"]["files_copied"] == 0
    assert again["stats"]["bytes_read"] == 0
    assert again["stats"]["archive_duplicate_groups"] == 0
    assert archive_files(archive) == files

    # A new file in a share is imported by the next run (and only it is read).
    write(sources[2] / "new/IMG_0100.JPG", jpeg((1, 2, 3), "2024:02:29 08:00:00"), "2024-03-01")
    third = run_json("consolidate", "-c", str(cfg), "photos")
    assert [c["archive"] for c in third["copies"]] == [str(archive / "2024/02/IMG_0100.JPG")]
    assert third["stats"]["files_copied"] == 1
    new_size = os.path.getsize(sources[2] / "new/IMG_0100.JPG")
    # EXIF date, copy, byte compare of the copy: only the new file is read, and no
    # file at all is hashed (its size is new, every other file is unchanged).
    assert third["stats"]["files_hashed"] == 0
    assert third["stats"]["bytes_read"] <= 4 * new_size


def sha_bytes(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()
