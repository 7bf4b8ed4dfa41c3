"""unlink_if_inode (prune_sources, cross-drive REMOVING, recovery) against a name
replaced at the instant between its check and its removal: an editor's atomic save
(a new file renamed over the name) or a directory made there. The check used to be
an lstat and the removal an unlink of the name: whatever the name held by then was
removed. Now the name is first renamed to a hold name of our own (one instant) and
checked there; anything else gets its name back."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd import handles
from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.fsops import link as fs
from dedupd.index.store import Store

pytestmark = pytest.mark.integration

OLD, SAVED = b"o" * 50_000, b"S" * 50_000


@pytest.fixture(params=["noreplace", "link"])
def give_back(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a name is given back: renameat2(RENAME_NOREPLACE), and the link used
    where renameat2 is missing (the test hook that hides it)."""
    if request.param == "link":
        monkeypatch.setenv("DEDUPD_TEST_NO_EXCHANGE", "1")
    return str(request.param)


def after_check(monkeypatch: pytest.MonkeyPatch, name: bytes, act: Callable[[], None]
                ) -> list[int]:
    """Run act once, right after unlink_if_inode's own check of `name` passed."""
    fired: list[int] = []
    real = handles.Parent.lstat

    def lstat(self: handles.Parent) -> os.stat_result:
        st = real(self)
        if self.name == name and not fired and \
                sys._getframe(1).f_code.co_name == "_holds":
            fired.append(1)
            act()
        return st

    monkeypatch.setattr(handles.Parent, "lstat", lstat)
    return fired


def save(d: Path, name: str) -> Callable[[], None]:
    def act() -> None:
        (d / ".new").write_bytes(SAVED)
        os.rename(d / ".new", d / name)
    return act


def leftovers(d: Path) -> list[str]:
    return sorted(n for n in os.listdir(d) if n.startswith(".dedupd"))


def test_unchanged_name_is_removed(tmp_path: Path, give_back: str) -> None:
    f = tmp_path / "f"
    f.write_bytes(OLD)
    st = f.stat()
    assert fs.unlink_if_inode(bytes(f), st.st_dev, st.st_ino)
    assert not f.exists() and leftovers(tmp_path) == []


def test_a_save_after_the_check_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        give_back: str) -> None:
    f = tmp_path / "f"
    f.write_bytes(OLD)
    st = f.stat()
    fired = after_check(monkeypatch, b"f", save(tmp_path, "f"))
    assert not fs.unlink_if_inode(bytes(f), st.st_dev, st.st_ino)
    assert fired and f.read_bytes() == SAVED and leftovers(tmp_path) == []


def test_a_directory_made_after_the_check_is_kept(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "f"
    f.write_bytes(OLD)
    st = f.stat()

    def mkdir() -> None:
        f.unlink()
        f.mkdir()
        (f / "inside").write_bytes(SAVED)

    fired = after_check(monkeypatch, b"f", mkdir)
    assert not fs.unlink_if_inode(bytes(f), st.st_dev, st.st_ino)
    assert fired and (f / "inside").read_bytes() == SAVED and leftovers(tmp_path) == []


def test_prune_keeps_a_save_made_between_its_check_and_its_unlink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, give_back: str) -> None:
    """prune_sources removes an imported source; the owner saves it anew right then:
    the save stays under its name (and the next run imports it)."""
    src, archive = tmp_path / "src", tmp_path / "archive"
    src.mkdir()
    archive.mkdir()
    victim = src / "b.bin"
    victim.write_bytes(OLD)
    fired = after_check(monkeypatch, b"b.bin", save(src, "b.bin"))
    cfg = ConsolidateConfig("p", (src,), archive, layout="{name}", prune_sources=True)
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    try:
        rep = consolidate(store, cfg, Options()).as_json()
        assert fired, rep
        assert victim.read_bytes() == SAVED, rep
        assert (archive / "b.bin").read_bytes() == OLD and leftovers(src) == []
        monkeypatch.undo()
        again = consolidate(store, cfg, Options()).as_json()
    finally:
        store.close()
    assert sorted(p.read_bytes() for p in archive.iterdir()
                  if not p.name.startswith(".dedupd")) == sorted([OLD, SAVED]), again


class _Crash(BaseException):
    """Stands in for kill -9 at one instant (nothing after it runs)."""


def test_crash_while_held_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """The process dies between the rename to the hold name and the unlink: the next
    run finishes the journalled prune (the source name is gone, its bytes are in the
    archive); the held copy, under the hold name its journal row reserves, is not left
    behind."""
    src, archive = tmp_path / "src", tmp_path / "archive"
    src.mkdir()
    archive.mkdir()
    (src / "b.bin").write_bytes(OLD)
    real = os.unlink

    def unlink(path: object, *a: object, **kw: object) -> None:
        if isinstance(path, bytes) and path.startswith(fs.HOLD_PREFIX):
            raise _Crash
        real(path, *a, **kw)  # type: ignore[arg-type]

    cfg = ConsolidateConfig("p", (src,), archive, layout="{name}", prune_sources=True)
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    try:
        monkeypatch.setattr(os, "unlink", unlink)
        with pytest.raises(_Crash):
            consolidate(store, cfg, Options())
        monkeypatch.undo()
        again = consolidate(store, cfg, Options()).as_json()
    finally:
        store.close()
    assert not (src / "b.bin").exists(), again
    assert (archive / "b.bin").read_bytes() == OLD
    assert again["stats"]["problems"] == 0, again
    # the hold name is the one the journal row reserves: recovery gave the held copy
    # its name back and finished the prune (byte compare, then the removal)
    assert leftovers(src) == [], again
