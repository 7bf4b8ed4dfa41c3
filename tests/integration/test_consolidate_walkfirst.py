"""`dedupd consolidate` forks its index walk before it imports the run
(consolidate/walkfirst.py): the run records that walk only when it walks what the
run would walk, and nothing changed the trees since it began; otherwise, and when
the run fails before its index pass, the walk is ended, never left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dedupd.cli import main
from dedupd.commands import consolidate as cmd
from dedupd.config import ConsolidateConfig
from dedupd.consolidate import walkfirst
from dedupd.consolidate.inventory import Inventory
from dedupd.consolidate.roots import resolve_roots
from dedupd.consolidate.treewalk import TreeWalk
from dedupd.fsops.archive_lock import LOCK_NAME, RUNNING, lock_archive
from tests.fixtures.consolidate import archive_files, write, write_config
from tests.fixtures.procs import children, gone_within

pytestmark = pytest.mark.integration


def _import(tmp_path: Path) -> tuple[Path, Path, Path]:
    src, archive = tmp_path / "s", tmp_path / "archive"
    for d in range(3):
        for i in range(4):
            write(src / f"d{d}" / f"f{i}.bin", bytes([d, i]) * (500 + i), "2019-01-01")
    archive.mkdir()
    return write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "x", [src], archive), \
        src, archive


def _taking(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each take() of the run gave: True for the walk forked first."""
    took: list[bool] = []
    real = walkfirst.take

    def take(*a: object) -> TreeWalk | None:
        w = real(*a)  # type: ignore[arg-type]
        took.append(w is not None)
        return w

    monkeypatch.setattr(walkfirst, "take", take)
    return took


def test_the_run_records_the_walk_forked_first(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _src, archive = _import(tmp_path)
    took = _taking(monkeypatch)
    before = set(children(os.getpid()))  # a session's servers (zfs-fuse, moto) too
    assert main(["consolidate", "-c", str(cfg), "x", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert took == [True]
    assert rep["stats"]["files_seen"] == 12 and rep["stats"]["files_copied"] == 12
    assert rep["stats"]["problems"] == 0 and len(archive_files(archive)) == 12
    assert walkfirst._walk is None
    assert any(isinstance(x, Inventory) for x in cmd._LEFT[0].heap)  # left to the exit
    assert not cmd._LEFT[0].helpers  # reaped after the output, none left behind
    assert set(children(os.getpid())) == before


def test_an_interrupted_run_s_trees_are_walked_again(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    """The lock file says a run was interrupted: its temp files are swept, so the
    walk forked before that is ended and the run walks the trees again."""
    cfg, _src, archive = _import(tmp_path)
    (archive / LOCK_NAME.decode()).write_bytes(RUNNING)
    write(archive / ".dedupd-copy.0123456789abcdef.tmp", b"half a copy")
    took = _taking(monkeypatch)
    assert main(["consolidate", "-c", str(cfg), "x", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert took == [False]  # dropped before the index pass: a walk of its own
    assert rep["stats"]["stale_temp_files"] == 1 and rep["stats"]["files_copied"] == 12
    assert rep["stats"]["problems"] == 0 and len(archive_files(archive)) == 12


def test_a_walk_of_other_roots_is_ended_not_taken(tmp_path: Path) -> None:
    _cfg, src, archive = _import(tmp_path)
    other = tmp_path / "other"
    write(other / "g.bin", b"g" * 700)
    mine = ConsolidateConfig("x", (src,), archive)
    walkfirst.start(mine)
    assert walkfirst._walk is not None
    pid = walkfirst._walk[1].pid
    theirs = ConsolidateConfig("x", (other,), archive)
    assert walkfirst.take(resolve_roots(theirs), theirs) is None
    assert gone_within(pid, 10) and pid not in children(os.getpid())
    walkfirst.start(mine)  # same roots, other walk options: ended too
    assert walkfirst._walk is not None
    pid = walkfirst._walk[1].pid
    excl = ConsolidateConfig("x", (src,), archive, exclude=("d1",))
    assert walkfirst.take(resolve_roots(excl), excl) is None
    assert gone_within(pid, 10)


def test_a_run_that_fails_before_its_index_pass_ends_its_walk(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another import holds the archive: exit 75, and no walk process is left."""
    cfg, _src, archive = _import(tmp_path)
    before = set(children(os.getpid()))
    held = lock_archive(os.fsencode(archive))
    try:
        assert main(["consolidate", "-c", str(cfg), "x"]) == 75
    finally:
        os.close(held)
    assert "another dedupd is importing" in capsys.readouterr().err
    assert set(children(os.getpid())) == before
    assert walkfirst._walk is None and not archive_files(archive)


def test_a_run_that_recovered_an_operation_walks_again(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """Recovery finishes an interrupted prune or link (tests of its own: the prune and
    hardlink kill tests); here a stand-in that removes a source the way a finished
    prune does, after the walk forked first listed it: the run must walk again, else
    it plans a copy of a source that is gone."""
    from dedupd.consolidate import run as run_mod

    cfg, src, archive = _import(tmp_path)

    def recover(_jr: object, _name: str, ops: run_mod.OpsReport) -> None:
        (src / "d1" / "f2.bin").unlink()
        ops.recovered.append({"op": 1, "before": "REMOVING", "after": "DONE"})

    monkeypatch.setattr(run_mod, "recover", recover)
    took = _taking(monkeypatch)
    assert main(["consolidate", "-c", str(cfg), "x", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert took == [False]
    assert rep["stats"]["problems"] == 0, rep["problems"]
    assert rep["stats"]["files_seen"] == 11 and len(archive_files(archive)) == 11
