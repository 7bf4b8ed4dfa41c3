"""First imports sort unhashed size groups while copying them (consolidate/sortcopy.py):
each source inode is read once, duplicates are byte-compared with the bytes of
the copy's source, a hash never merges anything, and a source rewritten between
that read and the rename gets no archive name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import xxhash

from dedupd import testpoints
from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index import provenance as prov
from dedupd.index.store import Store
from tests.fixtures.consolidate import archive_files, jpeg, manifest, write
from tests.fixtures.procs import zombies

pytestmark = pytest.mark.integration

X, Y = b"x" * 30_000, b"y" * 30_000  # one size: one unsorted group


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reasons(problems: tuple[dict[str, str], ...]) -> set[tuple[str, str]]:
    return {(os.path.basename(p["path"]), p["reason"]) for p in problems}


def test_group_read_once_duplicates_confirmed(tmp_path: Path) -> None:
    s1, s2, archive = tmp_path / "s1", tmp_path / "s2", tmp_path / "archive"
    archive.mkdir()
    photo = jpeg((7, 7, 7), "2011:05:06 07:08:09")
    write(s1 / "a.jpg", photo, "2015-01-01")
    write(s2 / "copy of a.jpg", photo, "2016-01-01")
    write(s1 / "b.bin", X, "2017-03-03")
    write(s2 / "c.bin", Y, "2018-04-04")
    write(s2 / "d.bin", X, "2019-05-05")
    os.link(s2 / "d.bin", s2 / "d-link.bin")  # another name of an inode: never read twice
    cfg = ConsolidateConfig("s", (s1, s2), archive)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        others = set(zombies(os.getpid()))  # of earlier tests
        rep = consolidate(store, cfg, Options())
        st = rep.stats
        assert rep.problems == () and st["files_copied"] == 3 and st["files_hashed"] == 0
        assert st["distinct_contents"] == 3 and st["source_paths"] == 6
        # every source inode read once (no hash pass), and each copy's source once more
        # by the verify of the copy (compared with the copy read back from the disk)
        src_bytes = 2 * len(photo) + 3 * len(X)
        assert st["source_bytes"] == src_bytes
        assert st["bytes_read"] == src_bytes + st["bytes_copied"]
        files = archive_files(archive)
        assert sorted(os.path.relpath(p, os.fsencode(archive)) for p in files) == [
            b"2011/05/a.jpg", b"2017/03/b.bin", b"2018/04/c.bin"]  # EXIF date from memory
        assert sorted(files.values()) == sorted(digest(d) for d in (photo, X, Y))
        assert st["files_confirmed"] == 3 and prov.count(store, "s") == 6
        # the index writer's last rows, waited for beside the report, are counted; the
        # writer (which checkpointed the index meanwhile) is reaped, no zombie left
        assert st["provenance_rows_written"] == 6
        assert not set(zombies(os.getpid())) - others
        srcs = {p.source_path for p in prov.sources_of(store, os.fsencode(archive /
                                                                         "2017/03/b.bin"))}
        assert srcs == {os.fsencode(p) for p in (s1 / "b.bin", s2 / "d.bin",
                                                 s2 / "d-link.bin")}
        again = consolidate(store, cfg, Options())  # hashes recorded: nothing to read
        assert again.stats["files_copied"] == 0 and again.stats["bytes_read"] == 0
        assert again.stats["files_unchanged"] == 6
    finally:
        store.close()


class _Collide:
    """xxhash.xxh3_128 where every content hashes alike."""

    def __init__(self, _data: bytes = b"") -> None:
        pass

    def update(self, _data: bytes | memoryview) -> None:
        pass

    def digest(self) -> bytes:
        return b"\0" * 16


def test_equal_hashes_with_other_bytes_are_never_merged(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Every file hashes alike (an XXH3 collision, which cannot be made for real): the
    byte compare keeps the contents apart; the file is reported and imported."""
    src, archive = tmp_path / "src", tmp_path / "archive"
    archive.mkdir()
    write(src / "a.bin", X, "2017-03-03")
    write(src / "b.bin", Y, "2017-03-03")
    write(src / "c.bin", X, "2017-03-03")
    monkeypatch.setattr(xxhash, "xxh3_128_digest", lambda _data: b"\0" * 16)
    monkeypatch.setattr(xxhash, "xxh3_128", _Collide)  # the copy worker's, read back
    cfg = ConsolidateConfig("h", (src,), archive, layout="{name}")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        rep = consolidate(store, cfg, Options())
    finally:
        store.close()
    assert reasons(rep.problems) == {("b.bin", "hash-collision")}
    files = archive_files(archive)
    assert {os.path.basename(p): v for p, v in files.items()} == {
        b"a.bin": digest(X), b"b.bin": digest(Y)}
    assert rep.stats["files_confirmed"] == 1  # c.bin, by its bytes


def test_source_rewritten_between_read_and_rename_is_refused(tmp_path: Path) -> None:
    """a1 is rewritten (same size, mtime put back) right after its bytes were read and
    before its copy is staged: the copy matches what was read, but the source's fstat
    at the rename shows the write, so neither it nor its duplicate gets a name."""
    src, archive = tmp_path / "src", tmp_path / "archive"
    archive.mkdir()
    write(src / "a1.bin", X, "2017-03-03")
    write(src / "a2.bin", X, "2017-03-03")
    write(src / "b.bin", Y, "2017-03-03")
    a1 = src / "a1.bin"
    arch = os.fsencode(archive)
    fired: list[bytes] = []

    def rewrite(_point: str, path: bytes) -> None:
        if not fired and path.startswith(arch):  # a1: read, its temp copy not made yet
            fired.append(path)
            st = os.stat(a1)
            a1.write_bytes(b"z" * len(X))
            os.utime(a1, ns=(st.st_atime_ns, st.st_mtime_ns))

    cfg = ConsolidateConfig("w", (src,), archive, layout="{name}")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        with testpoints.acting(("mutate",), rewrite):
            rep = consolidate(store, cfg, Options())
        # the copy worker (a forked process) ran the rewrite: its effect is on the disk
        assert a1.read_bytes() == b"z" * len(X)
        assert reasons(rep.problems) == {("a1.bin", "changed")}
        assert {os.path.basename(p) for p in archive_files(archive)} == {b"b.bin"}
        assert not [p for p in manifest(archive) if b".dedupd-copy." in p]
        assert prov.count(store, "w") == 1  # b.bin only: a2's content was not placed
        rep2 = consolidate(store, cfg, Options())  # the rest, as the files are now
        assert rep2.problems == ()
        got = {os.path.basename(p): v for p, v in archive_files(archive).items()}
        assert sorted(got.values()) == sorted(digest(d) for d in (b"z" * len(X), X, Y))
        assert prov.count(store, "w") == 3
    finally:
        store.close()


def test_lone_sizes_named_from_the_bytes_read_for_the_copy(tmp_path: Path) -> None:
    """Contents of a size nothing else has are named when read for their copy: the
    EXIF date comes from those bytes (no read of its own), a dry run still names
    each one first, and both agree."""
    s1, archive = tmp_path / "s1", tmp_path / "archive"
    archive.mkdir()
    photo = jpeg((9, 8, 7), "2012:03:04 05:06:07")
    write(s1 / "p.jpg", photo, "2015-01-01")
    write(s1 / "z.bin", b"z" * 1234, "2016-02-02")
    write(s1 / "a.bin", b"a" * 4321, "2016-02-03")
    cfg = ConsolidateConfig("s", (s1,), archive)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        dry = consolidate(store, cfg, Options(dry_run=True))
        assert dry.stats["bytes_read"] > 0  # the dry run read the photo's EXIF
        rep = consolidate(store, cfg, Options())
        st = rep.stats
        assert rep.problems == () and st["files_copied"] == 3 and st["files_hashed"] == 0
        assert st["source_bytes"] == len(photo) + 1234 + 4321
        assert st["bytes_read"] == 2 * st["source_bytes"]  # for the copy, by its verify
        assert sorted(os.path.relpath(c["archive"], archive) for c in rep.copies) == [
            "2012/03/p.jpg", "2016/02/a.bin", "2016/02/z.bin"]
        assert {c["archive"] for c in rep.copies} == {c["archive"] for c in dry.copies}
        assert archive_files(archive)[os.fsencode(archive / "2012/03/p.jpg")] == digest(photo)
    finally:
        store.close()
