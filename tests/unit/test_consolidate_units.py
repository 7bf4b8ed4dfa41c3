"""Pieces of consolidation on their own: layout, EXIF dates, the verified copy."""

from __future__ import annotations

import io
import itertools
import os
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from dedupd.consolidate.dates import capture_date, exif_date, image_kind, parse_exif_datetime
from dedupd.consolidate.inventory import Content, Unsorted
from dedupd.consolidate.layout import Fields, check_layout, render, with_suffix
from dedupd.consolidate.plan import copy_order
from dedupd.dedup.verify import first_difference
from dedupd.errors import ConfigError
from dedupd.files.events import Ident
from dedupd.fsops import anon
from dedupd.fsops.archive_lock import remove_stale_temps
from dedupd.fsops.copy import (
    DestDirs,
    Staged,
    adopt_staged,
    copy_verified,
    place_copy,
    stage_bytes,
    stage_copy,
    sync_batch,
)
from dedupd.fsops.fill import KEEP_BYTES
from dedupd.fsops.source import CopyError, read_source
from tests.fixtures.consolidate import corrupt_jpeg, jpeg, write

WHEN = datetime(2019, 7, 4, 12, 0, 0)


def test_layout_placeholders_and_non_utf8_names() -> None:
    f = Fields(b"IMG_\xff1.JPG", b"/mnt/backup-disk1/", WHEN)
    assert render("{year}/{month:02d}/{day:02d}/{name}", "undated", f) == \
        b"2019/07/04/IMG_\xff1.JPG"
    assert render("{source}/{year}/{stem}-{day}{ext}", "undated", f) == \
        b"backup-disk1/2019/IMG_\xff1-4.JPG"
    assert render("{year}/{name}", "no-date", Fields(b"a.txt", b"/s", None)) == b"no-date/a.txt"
    assert with_suffix(b"2019/07/a.tar.gz", 2) == b"2019/07/a.tar (2).gz"
    assert with_suffix(b"noext", 3) == b"noext (3)"


def test_layout_refuses_unsafe_paths_and_bad_templates() -> None:
    with pytest.raises(ValueError):
        render("../{name}", "u", Fields(b"a", b"/s", WHEN))
    with pytest.raises(ConfigError, match="unknown placeholder"):
        check_layout("x", "{year}/{camera}/{name}", "undated")
    with pytest.raises(ConfigError, match="must contain"):
        check_layout("x", "{year}/{month}", "undated")
    with pytest.raises(ConfigError, match="undated_dir"):
        check_layout("x", "{year}/{name}", "../out")


def test_exif_dates_from_real_images(tmp_path: Path) -> None:
    p = tmp_path / "a.jpg"
    write(p, jpeg((1, 2, 3), "2011:02:03 04:05:06"), "2020-01-01")
    when, problem, nread = exif_date(os.fsencode(p))
    assert when == datetime(2011, 2, 3, 4, 5, 6) and problem == "" and nread > 0
    # a TIFF written by Pillow with the same EXIF sub-IFD
    t = tmp_path / "b.tif"
    ex = Image.Exif()
    ex.get_ifd(0x8769)[0x9003] = "2012:12:12 12:12:12"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF", exif=ex.tobytes())
    write(t, buf.getvalue())
    assert exif_date(os.fsencode(t))[0] == datetime(2012, 12, 12, 12, 12, 12)


def test_corrupt_and_missing_exif_fall_back_to_mtime(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    write(bad, corrupt_jpeg(), "2016-08-09")
    d, _ = capture_date(os.fsencode(bad), os.stat(bad).st_mtime_ns, ("exif", "mtime"))
    assert (d.source, d.when and (d.when.year, d.when.month)) == ("mtime", (2016, 8))
    plain = tmp_path / "plain.jpg"
    write(plain, jpeg((0, 0, 0), None), "2015-05-05")
    d, _ = capture_date(os.fsencode(plain), os.stat(plain).st_mtime_ns, ("exif",))
    assert d.when is None and d.source == "none"  # exif only: goes to undated_dir
    assert image_kind(b"\x00\x00\x00\x18ftypheic\x00\x00") == "heic"
    assert parse_exif_datetime("0000:00:00 00:00:00") is None
    assert parse_exif_datetime("2001:02:03 04:05:06\x00") == datetime(2001, 2, 3, 4, 5, 6)


def test_copy_never_clobbers_and_leaves_no_temp(tmp_path: Path) -> None:
    src, dest = tmp_path / "src.bin", tmp_path / "out" / "dest.bin"
    write(src, os.urandom(300_000), "2020-02-02", mode=0o640)
    res = copy_verified(os.fsencode(src), os.fsencode(dest), Ident.of(os.stat(src)))
    assert dest.read_bytes() == src.read_bytes()
    assert os.stat(dest).st_mtime_ns == os.stat(src).st_mtime_ns
    assert os.stat(dest).st_mode & 0o777 == 0o640
    assert res.bytes_written == 300_000
    with pytest.raises(CopyError) as e:  # the name is taken: refused, original kept
        copy_verified(os.fsencode(src), os.fsencode(dest))
    assert e.value.reason == "exists"
    stale = os.listdir(tmp_path / "out")
    assert stale == ["dest.bin"]
    stat_before = Ident.of(os.stat(src))
    with open(src, "ab") as f:
        f.write(b"x")
    with pytest.raises(CopyError) as e:  # the source is not what the index said
        copy_verified(os.fsencode(src), os.fsencode(tmp_path / "out" / "b"), stat_before)
    assert e.value.reason == "changed"
    assert sorted(os.listdir(tmp_path / "out")) == ["dest.bin"]


def test_remove_stale_temps_touches_only_our_names(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    ours = tmp_path / "d" / ".dedupd-copy.0123abcd.tmp"
    theirs = tmp_path / "d" / ".dedupd-copy-notes.tmp"
    ours.write_bytes(b"partial")
    theirs.write_bytes(b"user file")
    assert remove_stale_temps(os.fsencode(tmp_path)) == [os.fsencode(ours)]
    assert not ours.exists() and theirs.exists()


def staged_file(st: Staged, dirs: DestDirs) -> str:
    """A path that opens a staged copy: a copy with no name yet (fsops/anon.py) is
    reached through the handle dirs holds."""
    return f"/proc/self/fd/{dirs.tmp_fd(st.tmp)}" if st.anon else os.fsdecode(st.tmp)


@pytest.mark.parametrize("size", [0, 5000, KEEP_BYTES + 1])  # kept in memory, or re-read
def test_staged_copy_is_verified_against_the_source_bytes(tmp_path: Path, size: int) -> None:
    """The read-back of the temp copy is compared with the source bytes: a copy that
    differs (here: bytes changed on the disk after the copy) never gets its name."""
    src, out = tmp_path / "src.bin", tmp_path / "out"
    write(src, os.urandom(size), "2020-02-02")
    with DestDirs() as dirs:
        st = stage_copy(os.fsencode(src), os.fsencode(out), Ident.of(os.stat(src)), dirs)
        assert (st.data is not None) == (size <= KEEP_BYTES)
        sync_batch(os.fsencode(tmp_path), [st], dirs)
        with open(staged_file(st, dirs), "r+b") as f:  # what reached the disk is not what was read
            f.seek(size // 2)
            f.write(b"\x00" if size and src.read_bytes()[size // 2] else b"\x01")
        with pytest.raises(CopyError) as e:
            place_copy(st, os.fsencode(out / "dest.bin"), dirs=dirs)
        assert e.value.reason == "mismatch"
        assert os.listdir(out) == []  # no name, and the temp copy is gone


def staged_by_run(src: Path, out: Path, dirs: DestDirs, ident: Ident | None = None) -> Staged:
    """A copy staged as a consolidation stages it: read and written by the run
    (read_source, stage_bytes), adopted by the copy worker (adopt_staged)."""
    r = read_source(os.fsencode(src), ident)
    tfd, name = stage_bytes(r.data, r.stat, os.fsencode(out), dirs)
    return adopt_staged(r.src, tfd, r.fd, r.stat, r.head, r.full, os.fsencode(out), name,
                        dirs)


@pytest.mark.parametrize("change", ["shorter", "longer", "last byte"])
def test_read_back_catches_every_difference(tmp_path: Path, change: str) -> None:
    """The copies are read back into one reused buffer: a copy of the right bytes read
    back first leaves them in it, so a later copy that is shorter by its last byte (the
    buffer still holds that byte), longer, or different in its last byte must still
    fail, whether compared with the bytes kept from the copy (stage_copy) or with the
    source re-read (a copy the run staged)."""
    data = os.urandom(70_000)
    out = tmp_path / "out"
    for i, stage in enumerate((
            lambda p, d: stage_copy(os.fsencode(p), os.fsencode(out), None, d),
            lambda p, d: staged_by_run(p, out, d))):
        src = tmp_path / f"src{i}.bin"
        write(src, data, "2020-02-02")
        with DestDirs() as dirs:
            good, bad = stage(src, dirs), stage(src, dirs)
            sync_batch(os.fsencode(tmp_path), [good, bad], dirs)
            with open(staged_file(bad, dirs), "r+b") as f:
                if change == "shorter":
                    f.truncate(len(data) - 1)
                elif change == "longer":
                    f.seek(0, os.SEEK_END)
                    f.write(b"\0")
                else:
                    f.seek(len(data) - 1)
                    f.write(bytes([data[-1] ^ 1]))
            place_copy(good, os.fsencode(out / f"good{i}"), dirs=dirs)
            with pytest.raises(CopyError) as e:
                place_copy(bad, os.fsencode(out / f"bad{i}"), dirs=dirs)
            assert e.value.reason == "mismatch", e.value
    assert sorted(os.listdir(out)) == ["good0", "good1"]


def test_source_changed_after_its_copy_is_refused(tmp_path: Path) -> None:
    """Bytes kept from the copy are only trusted while the source stays the same inode,
    unchanged: a rewrite with the same size and mtime still changes its ctime."""
    src, out = tmp_path / "src.bin", tmp_path / "out"
    write(src, b"a" * 5000, "2020-02-02")
    with DestDirs() as dirs:
        st = stage_copy(os.fsencode(src), os.fsencode(out), Ident.of(os.stat(src)), dirs)
        mtime = os.stat(src).st_mtime_ns
        src.write_bytes(b"b" * 5000)
        os.utime(src, ns=(mtime, mtime))
        sync_batch(os.fsencode(tmp_path), [st], dirs)
        with pytest.raises(CopyError) as e:
            place_copy(st, os.fsencode(out / "dest.bin"), dirs=dirs)
        assert e.value.reason == "changed"
        assert os.listdir(out) == []


def test_read_source_then_stage_bytes_is_a_verified_copy(tmp_path: Path) -> None:
    """A source read into memory and staged from those bytes by the run, adopted with
    its handle by the copy worker, is a verified copy; a source that is not the indexed
    inode any more is refused before any read, and one rewritten after the read gets
    no name."""
    src, out = tmp_path / "src.bin", tmp_path / "out"
    write(src, b"a" * 5000, "2020-02-02")
    os.chmod(src, 0o640)
    ident = Ident.of(os.stat(src))
    with pytest.raises(CopyError) as e:
        read_source(os.fsencode(src), ident._replace(size=4999))
    assert e.value.reason == "changed"
    with DestDirs() as dirs:
        st = staged_by_run(src, out, dirs, ident)
        sync_batch(os.fsencode(tmp_path), [st], dirs)
        res = place_copy(st, os.fsencode(out / "a.bin"), dirs=dirs)
        assert (out / "a.bin").read_bytes() == b"a" * 5000
        assert res.full == st.full and res.bytes_read == 5000  # the verify's source read
        got = os.stat(out / "a.bin")  # the source's metadata, set by the run
        assert (got.st_mode & 0o7777, got.st_mtime_ns) == (0o640, ident.mtime_ns)
        st = staged_by_run(src, out, dirs, ident)
        src.write_bytes(b"b" * 5000)  # after the read, before the link
        os.utime(src, ns=(ident.mtime_ns, ident.mtime_ns))
        sync_batch(os.fsencode(tmp_path), [st], dirs)
        with pytest.raises(CopyError) as e:
            place_copy(st, os.fsencode(out / "b.bin"), dirs=dirs)
        assert e.value.reason == "changed"
    assert sorted(os.listdir(out)) == ["a.bin"]


def test_compare_with_kept_bytes() -> None:
    assert first_difference(b"abcdef", b"abcxef") == 3
    assert first_difference(b"abc", b"abcd") == 3
    assert first_difference(b"", b"") == 0


@pytest.mark.parametrize("anon_ok", [True, False])
def test_staged_copy_has_no_name_until_placed_never_over_a_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anon_ok: bool) -> None:
    """Where the filesystem can (O_TMPFILE, fsops/anon.py) a staged copy has no name at
    all: a crash leaves nothing to sweep. Either way (anon_ok False: a filesystem
    without O_TMPFILE, the temp name) placing it never replaces a name that appeared,
    and the copy gets its name with the source's bytes and mtime."""
    src, out = tmp_path / "src.bin", tmp_path / "out"
    data = os.urandom(9000)
    write(src, data, "2020-02-02")
    out.mkdir()
    if not anon_ok:  # as on FUSE or NFS: the probe's answer for this filesystem
        monkeypatch.setitem(anon._able, os.stat(out).st_dev, False)
    with DestDirs() as dirs:
        st = stage_copy(os.fsencode(src), os.fsencode(out), Ident.of(os.stat(src)), dirs)
        assert st.anon == anon_ok
        assert [n.startswith(".dedupd-copy.") for n in os.listdir(out)] == \
            ([] if anon_ok else [True])
        sync_batch(os.fsencode(tmp_path), [st], dirs)
        (out / "taken.bin").write_bytes(b"someone else's")
        with pytest.raises(CopyError) as e:
            place_copy(st, os.fsencode(out / "taken.bin"), dirs=dirs)
        assert e.value.reason == "exists"
        assert (out / "taken.bin").read_bytes() == b"someone else's"
        res = place_copy(st, os.fsencode(out / "dest.bin"), dirs=dirs)
    assert sorted(os.listdir(out)) == ["dest.bin", "taken.bin"]
    assert (out / "dest.bin").read_bytes() == data
    assert res.dest_stat.st_ino == os.stat(out / "dest.bin").st_ino
    assert os.stat(out / "dest.bin").st_mtime_ns == os.stat(src).st_mtime_ns


def test_copy_order_takes_single_files_and_size_groups_in_turns() -> None:
    singles: list[Content] = [Content(100, None, (), ()) for _ in range(12)]
    groups = [Unsorted(10 + i, (), 3) for i in range(8)]  # 24 files in all
    out = copy_order(list(singles), groups, 300, 6)
    assert sorted(map(id, out)) == sorted(map(id, [*singles, *groups]))  # each once
    # each kept in its own order
    assert [x for x in out if isinstance(x, Unsorted)] == groups
    assert [x for x in out if not isinstance(x, Unsorted)] == singles
    # in turns: runs of 3 single files (300 bytes) and of 2 groups (6 files), at one
    # pace in files (a run of single files first, when both are at the same share)
    runs = [len(list(g)) for _, g in itertools.groupby(out, lambda x: isinstance(x, Unsorted))]
    assert runs == [3, 2, 3, 2, 3, 2, 3, 2], out
    # either side alone is kept as it is
    assert copy_order(list(singles), [], 300, 6) == singles
    assert copy_order([], groups, 300, 6) == groups
