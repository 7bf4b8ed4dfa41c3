"""Opt-in prune_sources: a source name goes only after a byte compare with the
archive, through the journal; dry run first; quarantine; kill -9 at every step."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index.store import Store
from tests.fixtures.consolidate import archive_files, dedupd, jpeg, manifest, write, write_config

pytestmark = pytest.mark.integration

KILL_AT_STEP = "DEDUPD_TEST_KILL_AT_STEP"  # the journal's test hook (dedupd/dedup/journal.py)
JOURNAL_STEPS_PER_PRUNE = 3  # PENDING, REMOVING, DONE


def shares(base: Path) -> list[Path]:
    s1, s2 = base / "s1", base / "s2"
    write(s1 / "IMG_1.jpg", jpeg((5, 5, 5), "2021:06:01 09:00:00"), "2021-06-02")
    write(s2 / "copy of IMG_1.jpg", jpeg((5, 5, 5), "2021:06:01 09:00:00"), "2022-01-01")
    write(s2 / "notes.txt", b"notes\n" * 300, "2020-10-10")
    return [s1, s2]


def source_files(sources: list[Path], skip: Path | None = None) -> dict[bytes, str]:
    q = None if skip is None else os.fsencode(skip) + b"/"
    return {p: v[-1] for s in sources for p, v in manifest(s).items()
            if v[-1] and not (q and p.startswith(q))}


def test_prune_dry_run_then_apply_with_quarantine(tmp_path: Path,
                                                  zfs_archive: Callable[[str], Path]) -> None:
    sources = shares(tmp_path / "shares")
    quarantine = tmp_path / "shares" / "s1" / ".quarantine"  # inside a share: never indexed
    archive = zfs_archive("pruned")
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "p", sources, archive,
                       f'prune_sources = true\nquarantine_dir = "{quarantine}"\n')
    before = source_files(sources)

    dry = json.loads(dedupd("consolidate", "-c", str(cfg), "p", "--dry-run", "--json").stdout)
    assert sorted(a["path"] for a in dry["actions"]) == sorted(map(os.fsdecode, before))
    assert {a["result"] for a in dry["actions"]} == {"would"}
    assert source_files(sources) == before and not archive_files(archive)

    rep = json.loads(dedupd("consolidate", "-c", str(cfg), "p", "--json").stdout)
    assert rep["stats"]["sources_pruned"] == 3, rep["refused"]
    # written before the prune (which must find them committed), and counted
    assert rep["stats"]["provenance_rows_written"] == 3
    assert source_files(sources, skip=quarantine) == {}  # every name removed...
    kept = {v[-1] for p, v in manifest(quarantine).items() if v[-1]}
    assert kept == set(before.values())  # ...but kept in the quarantine
    assert set(archive_files(archive).values()) == set(before.values())  # and archived
    # the journal recorded every removal as finished
    ops = json.loads(dedupd("journal", "--db", f"sqlite:///{tmp_path / 'db.sqlite'}",
                            "--json").stdout)
    states = [o["state"] for o in ops["operations"]]
    assert states == ["DONE"] * 3
    # provenance outlives the pruned names
    w = json.loads(dedupd("where", "-c", str(cfg), "--json",
                          str(sources[1] / "notes.txt")).stdout)
    assert w["archive"][0]["archive"] == str(archive / "2020/10/notes.txt")
    # the quarantine (inside a share) is not a source: a re-run leaves it alone
    again = json.loads(dedupd("consolidate", "-c", str(cfg), "p", "--json").stdout)
    assert again["stats"]["source_paths"] == 0 and not again["actions"]
    assert {v[-1] for v in manifest(quarantine).values() if v[-1]} == kept


def test_prune_refuses_a_source_that_changed(tmp_path: Path,
                                             zfs_archive: Callable[[str], Path]) -> None:
    sources = shares(tmp_path / "shares")
    archive = zfs_archive("changed")
    cfg = ConsolidateConfig("c", tuple(sources), archive, prune_sources=True)
    victim = sources[1] / "notes.txt"

    def on_copy(files: int, total: int, nbytes: int, btotal: int) -> None:
        if files == total:  # after the copies, before the prune: a user edits the file
            with open(victim, "r+b") as f:
                f.write(b"N")

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        rep = consolidate(store, cfg, Options(False, None, on_copy))
    finally:
        store.close()
    assert victim.exists()  # not removed: it no longer matches the archive copy
    assert {(os.path.basename(r["path"]), r["reason"]) for r in rep.refused} == {
        ("notes.txt", "changed")}
    assert not (sources[0] / "IMG_1.jpg").exists()  # the unchanged ones went


def test_kill_during_prune_loses_nothing(tmp_path: Path,
                                         zfs_archive: Callable[[str], Path]) -> None:
    root = zfs_archive("killprune")
    for k in range(1, JOURNAL_STEPS_PER_PRUNE * 3 + 1):
        sources = shares(tmp_path / f"shares{k}")
        contents = set(source_files(sources).values())
        archive = root / f"k{k}"
        archive.mkdir()
        cfg = write_config(tmp_path / f"c{k}.toml", tmp_path / f"db{k}.sqlite", "p", sources,
                           archive, "prune_sources = true\n")
        r = dedupd("consolidate", "-c", str(cfg), "p", env={KILL_AT_STEP: str(k)}, check=False)
        assert r.returncode == -9, (k, r.stderr.decode())
        # whatever was removed is in the archive, byte for byte
        assert set(archive_files(archive).values()) == contents
        assert set(source_files(sources).values()) <= contents  # nothing half-changed
        rep = json.loads(dedupd("consolidate", "-c", str(cfg), "p", "--json").stdout)
        assert rep["stats"]["problems"] == 0, rep["problems"]
        assert source_files(sources) == {}, (k, rep["refused"])
        assert set(archive_files(archive).values()) == contents
        if k % JOURNAL_STEPS_PER_PRUNE == 2:  # killed in REMOVING: recovery finished it
            assert [x["after"] for x in rep["recovered"]] == ["DONE"], k
