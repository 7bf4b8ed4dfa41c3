"""fsops.whole.replace_file: the one temp-file-and-rename writer (metrics -o, a local
rclone remote's manifest). Real files in a temp directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dedupd.fsops.whole import replace_file


def test_the_file_is_replaced_whole_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    dest = tmp_path / "m.prom"
    dest.write_bytes(b"old")
    old = os.umask(0o077)
    try:
        replace_file(dest, b"new\n")
    finally:
        os.umask(old)
    assert dest.read_bytes() == b"new\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["m.prom"]  # no temp file left


def test_a_symlink_at_the_name_is_replaced_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    dest = tmp_path / "m.prom"
    dest.symlink_to(target)
    replace_file(dest, b"new", 0o600)
    assert not dest.is_symlink() and dest.read_bytes() == b"new"
    assert target.read_bytes() == b"keep"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_a_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    (dest / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced
    with pytest.raises(OSError):
        replace_file(dest, b"x")
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replace_file(tmp_path / "no" / "m.prom", b"x")


def test_the_directory_is_looked_up_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """The directory swapped for another (a symlink to it) once the temp file is made:
    the rename still acts in the directory the temp file is in, where it was made
    (before, the rename resolved the path again and went into the swapped one)."""
    real, other = tmp_path / "d", tmp_path / "other"
    real.mkdir()
    other.mkdir()
    opened = os.open

    def open_then_swap(path: object, flags: int, *a: object, **kw: object) -> int:
        fd = opened(path, flags, *a, **kw)  # type: ignore[arg-type]
        if flags & os.O_EXCL:  # the temp file: now the directory's path changes
            os.rename(real, tmp_path / "d.moved")
            os.symlink(other, real)
        return fd

    monkeypatch.setattr(os, "open", open_then_swap)
    replace_file(real / "m.prom", b"new")
    monkeypatch.undo()
    assert (tmp_path / "d.moved" / "m.prom").read_bytes() == b"new"
    assert os.listdir(other) == [] and os.listdir(tmp_path / "d.moved") == ["m.prom"]
