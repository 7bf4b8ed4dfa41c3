"""A real second user acts on its sources while their batches are in the copy worker.

The worker syncs a batch in a thread while it stages the next, and verifies and
links it only after that (consolidate/copyloop.py), so a batch's sources stay
in the worker's hands longer than before. The worker is stopped (its test
hook) with batch 1 placed, batch 2 staged and syncing or synced, batch 3
staged in part or whole; the user then truncates, hardlinks elsewhere, saves
over (a new inode renamed to the name) or replaces by a symlink to a root-only
file every one of its sources. Whatever it did: no copy of batches 2 and 3 gets
a name (each is refused, its source "changed"), nothing of the root-only file
reaches the archive, no temp file stays, and the next run imports the sources
as they are then, its index rows naming files with those bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dedupd.index import provenance as prov
from dedupd.index.store import Store
from tests.fixtures.attacker import User
from tests.fixtures.consolidate import dedupd, import_stopped_at, manifest, write_config

pytestmark = pytest.mark.integration

ACTS = {
    "truncate": 'for f in "$1"/f*.bin; do truncate -s 7000 "$f"; done',
    "hardlink": 'for f in "$1"/f*.bin; do ln "$f" "$2/$(basename "$f").ln"; done',
    "save-over": 'for f in "$1"/f*.bin; do printf new > "$f.n"; cat "$f" >> "$f.n"; '
                 'mv -f "$f.n" "$f"; done',
    "symlink": 'for f in "$1"/f*.bin; do mv "$f" "$2/"; ln -s "$3" "$f"; done',
}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the user can reach whatever other test sessions do: not under
    /tmp/pytest-of-root, which each starting pytest session makes 0700 again (the
    user then lost its way to tmp_path mid-test: "Permission denied")."""
    d = Path(tempfile.mkdtemp(prefix="dedupd-atk-"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("stop_at", ["written:5", "synced:3", "verified:3"])
@pytest.mark.parametrize("act", sorted(ACTS))
def test_user_acts_on_sources_while_their_batches_are_in_the_worker(
        tmp_path: Path, open_dir: Path, attacker: User, act: str, stop_at: str) -> None:
    share, other, archive = open_dir / "share", open_dir / "other", tmp_path / "archive"
    for d in (share, other, archive):
        d.mkdir()
    attacker.owns(share, other)
    secret = tmp_path / "secret"
    secret.write_bytes(b"root only\n" * 3000)
    secret.chmod(0o600)
    for i in range(6):
        attacker.run('head -c "$2" /dev/urandom > "$1"; touch -d 2019-01-01T12:00 "$1"',
                     str(share / f"f{i}.bin"), str(20_000 + i))
    old = {p.name: p.read_bytes() for p in share.iterdir()}
    db = tmp_path / "db.sqlite"
    cfg = write_config(tmp_path / "c.toml", db, "x", [share], archive, 'layout = "{name}"\n')
    with import_stopped_at(cfg, "x", stop_at, "--json") as (run, worker):
        attacker.run(ACTS[act], str(share), str(other), str(secret))
        os.kill(worker, signal.SIGCONT)
        out, err = run.communicate(timeout=120)
    assert b"Traceback" not in err, err
    rep = json.loads(out)
    # verified:3: f2 was compared with its source, unchanged then, before the act
    first = 3 if stop_at == "verified:3" else 2
    refused = sorted((p["path"].rsplit("/", 1)[1], p["reason"]) for p in rep["problems"])
    assert refused == [(f"f{i}.bin", "changed") for i in range(first, 6)], (act, refused)
    placed = {p.name: p.read_bytes() for p in archive.iterdir() if p.suffix == ".bin"}
    assert placed == {f"f{i}.bin": old[f"f{i}.bin"] for i in range(first)}, act
    assert not [p for p in manifest(archive) if b".dedupd-copy." in p]

    again = dedupd("consolidate", "-c", str(cfg), "x", "--json")
    assert json.loads(again.stdout)["stats"]["problems"] == 0, again.stdout
    archived = {_sha(p.read_bytes()) for p in archive.rglob("*")
                if p.is_file() and not p.name.startswith(".dedupd")}
    assert _sha(secret.read_bytes()) not in archived
    now = {p.name: p.read_bytes() for p in share.iterdir() if not p.is_symlink()}
    assert archived == {_sha(b) for b in (*(old[f"f{i}.bin"] for i in range(first)),
                                          *now.values())}
    store = Store(f"sqlite:///{db}")
    try:  # every row names an archive file with its source path's bytes as they are
        rows = prov.load(store, "x")  # (or were, for a source gone: its history stays)
        assert {os.path.basename(p).decode() for p in rows} >= set(now), (act, sorted(rows))
        for path, row in rows.items():
            src = Path(os.fsdecode(path))
            had = src.read_bytes() if src.name in now else old[src.name]
            assert Path(os.fsdecode(row.archive_path)).read_bytes() == had, (act, path)
    finally:
        store.close()


@pytest.mark.parametrize("stop_at", ["written:3", "synced:3", "placed:3", "answered:2"])
def test_worker_stopped_then_its_run_killed(tmp_path: Path, stop_at: str) -> None:
    """The copy worker frozen (SIGSTOP, the test hook) with batches of two in flight,
    then its run killed -9: a next run is refused while the frozen worker holds the
    archive's lock (exit 75, no traceback); once the worker is let go it exits on its
    own (EOF or EPIPE) placing at most verified copies, and the next run completes
    the import: each content once, whole, and a row for every source path."""
    from tests.integration.test_consolidate_crash import (
        check_archive,
        small_sources,
        wait_unlocked,
    )

    sources, contents = small_sources(tmp_path / "src", more=True)
    n_paths = sum(1 for s in sources for v in manifest(s).values() if v[-1])
    archive = tmp_path / "archive"
    archive.mkdir()
    db = tmp_path / "db.sqlite"
    cfg = write_config(tmp_path / "c.toml", db, "x", sources, archive)
    # no pipes: the frozen worker would hold them open
    with import_stopped_at(cfg, "x", stop_at, pipes=False) as (run, _worker):
        run.kill()
        run.wait(timeout=60)
        second = dedupd("consolidate", "-c", str(cfg), "x", check=False)
        assert second.returncode == 75, (second.returncode, second.stderr)
        assert b"Traceback" not in second.stderr and b"dedupd: " in second.stderr
    wait_unlocked(archive)
    check_archive(archive, contents, complete=False)
    rep = json.loads(dedupd("consolidate", "-c", str(cfg), "x", "--json").stdout)
    assert rep["stats"]["problems"] == 0, rep["problems"]
    check_archive(archive, contents, complete=True)
    store = Store(f"sqlite:///{db}")
    try:
        assert prov.count(store, "x") == n_paths
        for row in prov.load(store, "x").values():
            assert Path(os.fsdecode(row.archive_path)).read_bytes() == Path(
                os.fsdecode(row.source_path)).read_bytes()
    finally:
        store.close()
