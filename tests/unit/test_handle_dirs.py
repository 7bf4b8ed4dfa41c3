"""dirhandles.Dirs: a batch's directory handles, each directory resolved once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd import dirhandles, handles


def b(p: Path) -> bytes:
    return os.fsencode(str(p))


def test_one_handle_per_directory_until_close(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        for n in ("a", "b"):
            (tmp_path / d / n).write_bytes(n.encode())
    dirs = dirhandles.Dirs()
    try:
        with dirs.parent(b(tmp_path / "x" / "a")) as pa, \
                dirs.parent(b(tmp_path / "x" / "b")) as pb, \
                dirs.parent(b(tmp_path / "y" / "a")) as pc:
            assert pa.fd == pb.fd != pc.fd
            assert (pa.name, pb.name) == (b"a", b"b")
            assert pa.lstat().st_ino == (tmp_path / "x" / "a").stat().st_ino
            held = pa.fd
        os.fstat(held)  # closing a shared Parent leaves the batch's handle open
        assert dirs.lstat(b(tmp_path / "x" / "b")).st_ino == (tmp_path / "x" / "b").stat().st_ino
    finally:
        dirs.close()
    with pytest.raises(OSError):
        os.fstat(held)


def test_held_handle_is_the_directory_and_close_resolves_afresh(tmp_path: Path) -> None:
    """The fd is the proof: a directory renamed and replaced by a symlink after it was
    resolved is still reached through the handle (the same inode, never the link's
    target); after close() the path is resolved again and refused."""
    d, elsewhere = tmp_path / "d", tmp_path / "elsewhere"
    d.mkdir()
    elsewhere.mkdir()
    (d / "f").write_bytes(b"mine")
    (elsewhere / "f").write_bytes(b"theirs")
    ino = (d / "f").stat().st_ino
    dirs = dirhandles.Dirs()
    try:
        assert dirs.lstat(b(d / "f")).st_ino == ino
        d.rename(tmp_path / "d.real")
        d.symlink_to(elsewhere)
        assert dirs.lstat(b(d / "f")).st_ino == ino
        dirs.close()
        with pytest.raises(handles.PathChanged):
            dirs.lstat(b(d / "f"))
    finally:
        dirs.close()


def test_final_name_never_followed(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"t")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    dirs = dirhandles.Dirs()
    try:
        assert (dirs.lstat(b(tmp_path / "link")).st_mode & 0o170000) == 0o120000
        with dirs.parent(b(tmp_path / "link")) as p, pytest.raises(OSError):
            os.close(p.open())
        with pytest.raises(handles.PathChanged):
            dirs.parent(b(tmp_path / ".."))
    finally:
        dirs.close()


def test_past_the_limit_a_parent_owns_its_handle(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f").write_bytes(b"f")
    dirs = dirhandles.Dirs(limit=1)
    try:
        with dirs.parent(b(tmp_path / "x" / "f")) as shared:
            assert not shared.owned
        own = dirs.parent(b(tmp_path / "y" / "f"))
        fd = own.fd
        assert own.owned and own.lstat().st_ino == (tmp_path / "y" / "f").stat().st_ino
        own.close()
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        dirs.close()
