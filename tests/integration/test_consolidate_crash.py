"""kill -9 at every copy step, files vanishing and changing during a run."""

from __future__ import annotations

import fcntl
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.copyworker import KILL_WHICH_ENV
from dedupd.consolidate.execute import BATCH_ENV, KILL_ENV
from dedupd.consolidate.run import Options, consolidate
from dedupd.index import provenance as prov
from dedupd.index.store import Store
from tests.fixtures.consolidate import (
    archive_files,
    dedupd,
    import_stopped_at,
    jpeg,
    manifest,
    sha,
    write,
    write_config,
)

pytestmark = pytest.mark.integration



def small_sources(base: Path, more: bool = False) -> tuple[list[Path], set[str]]:
    """Five contents (six with more), of six (seven) source paths."""
    s1, s2, s3 = base / "a", base / "b", base / "c"
    write(s1 / "p1.jpg", jpeg((1, 1, 1), "2020:01:01 00:00:00"), "2020-02-02")
    write(s2 / "p1-again.jpg", jpeg((1, 1, 1), "2020:01:01 00:00:00"), "2021-02-02")
    write(s2 / "p2.jpg", jpeg((9, 9, 9), "2020:03:01 00:00:00"), "2020-02-02")
    write(s3 / "big.bin", os.urandom(1 << 20), "2019-09-09")
    write(s3 / "mid.bin", os.urandom(100_000), "2019-09-10")
    write(s1 / "t.txt", b"text\n" * 1000, "2018-01-01")
    if more:
        write(s3 / "u.txt", b"more\n" * 900, "2018-01-02")
    srcs = [s1, s2, s3]
    contents = {v[-1] for s in srcs for v in manifest(s).values() if v[-1]}
    return srcs, contents


def check_archive(archive: Path, contents: set[str], complete: bool) -> None:
    files = archive_files(archive)
    # Whatever the crash point, a file under a real name is a whole source content.
    assert set(files.values()) <= contents
    assert len(files) == len(set(files.values()))
    if complete:
        assert set(files.values()) == contents
        assert not [p for p in manifest(archive) if b".dedupd-copy." in p]


def kill_points(n: int) -> list[str]:
    """Copies go in one batch here (copyworker.py), every copy staged by the run before
    the batch is sent: "written" for each file (adopted by the worker), "syncing"
    (its sync begun), "synced" for each file, then "verified", "placed", "queued" file
    by file, "answered", and "ended" (the round's last sync). Kill after the first
    and last of each per-file step and at each step kind of a middle file."""
    mid = n // 2 + 1
    return ["written:1", f"written:{n}", "syncing:1", "synced:1", f"synced:{n}",
            f"verified:{mid}", f"placed:{mid}", f"queued:{mid}", f"queued:{n}",
            "answered:1", "ended:1"]


def test_kill_at_copy_steps(tmp_path: Path, zfs_archive: Callable[[str], Path]) -> None:
    sources, contents = small_sources(tmp_path / "src")
    n_paths = sum(1 for s in sources for v in manifest(s).values() if v[-1])
    before = {s: manifest(s) for s in sources}
    root = zfs_archive("crash")
    for i, k in enumerate(kill_points(len(contents))):
        archive = root / f"k{i}"
        archive.mkdir()
        db = tmp_path / f"db{i}.sqlite"
        cfg = write_config(tmp_path / f"c{i}.toml", db, "x", sources, archive)
        r = dedupd("consolidate", "-c", str(cfg), "x", env={KILL_ENV: k}, check=False)
        assert r.returncode == -9, (k, r.returncode, r.stderr.decode())
        check_archive(archive, contents, complete=False)
        temps = [p for p in manifest(archive) if b".dedupd-copy." in p]
        step = k.partition(":")[0]
        if step in ("written", "syncing", "synced"):  # killed before anything was placed
            assert not archive_files(archive) and len(temps) == len(contents), k
        rep = json.loads(dedupd("consolidate", "-c", str(cfg), "x", "--json").stdout)
        assert rep["stats"]["problems"] == 0, rep["problems"]
        assert rep["stats"]["stale_temp_files"] == len(temps), k  # removed, then redone
        check_archive(archive, contents, complete=True)
        store = Store(f"sqlite:///{db}")
        try:  # provenance is whole again: one row per source path
            assert prov.count(store, "x") == n_paths, k
        finally:
            store.close()
    # the last one once more through the CLI: where, and a re-run that reads nothing
    w = json.loads(dedupd("where", "-c", str(cfg), "--json",
                          str(archive / "2020/01/p1.jpg")).stdout)
    assert len(w["sources"]) == 2
    again = json.loads(dedupd("consolidate", "-c", str(cfg), "x", "--json").stdout)
    assert again["stats"]["files_copied"] == 0 and again["stats"]["bytes_read"] == 0
    assert {s: manifest(s) for s in sources} == before


def test_files_vanish_and_change_during_run(tmp_path: Path,
                                            zfs_archive: Callable[[str], Path]) -> None:
    sources, _ = small_sources(tmp_path / "src")
    s1, s2, s3 = sources
    write(s1 / "gone-before-hash.bin", b"x" * 100_000, "2019-01-01")  # same size as mid.bin
    write(s2 / "gone-before-copy.bin", b"y" * 12_345, "2019-01-01")
    write(s3 / "changes.bin", b"z" * 23_456, "2019-01-01")
    archive = zfs_archive("vanish")
    cfg = ConsolidateConfig("v", tuple(sources), archive)
    fired: set[str] = set()

    def on_stage(stage: str, done: int, total: int) -> None:
        if stage == "hash" and "hash" not in fired:
            fired.add("hash")
            os.unlink(s1 / "gone-before-hash.bin")

    def on_copy(files: int, total: int, nbytes: int, btotal: int) -> None:
        if files == 0 and "copy" not in fired:
            fired.add("copy")
            os.unlink(s2 / "gone-before-copy.bin")
            with open(s3 / "changes.bin", "ab") as f:
                f.write(b"more")

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        rep = consolidate(store, cfg, Options(False, on_stage, on_copy))
        reasons = {(os.path.basename(os.fsencode(p["path"])), p["reason"])
                   for p in rep.problems}
        assert (b"gone-before-hash.bin", "vanished") in reasons
        assert (b"gone-before-copy.bin", "vanished") in reasons
        assert (b"changes.bin", "changed") in reasons
        names = {os.path.basename(p) for p in archive_files(archive)}
        assert not names & {b"gone-before-hash.bin", b"gone-before-copy.bin", b"changes.bin"}
        assert not [p for p in manifest(archive) if b".dedupd-copy." in p]
        # The next run imports the changed file as it is now.
        rep2 = consolidate(store, cfg, Options())
        assert [os.path.basename(c["archive"]) for c in rep2.copies] == ["changes.bin"]
        files = archive_files(archive)
        assert sha(os.fsencode(s3 / "changes.bin")) in files.values()
    finally:
        store.close()


def _killed_then_rerun(k: int, archive: Path, db: Path, cfg: Path, contents: set[str],
                       n_paths: int, env: dict[str, str]) -> None:
    """After kill point k: nothing partial under a real name, every row written names
    a copy that is there, whole; a re-run completes the archive and its rows."""
    check_archive(archive, contents, complete=False)
    store = Store(f"sqlite:///{db}")
    try:
        files = archive_files(archive)
        for row in prov.load(store, "x").values():
            assert files.get(row.archive_path) in contents, (k, row.archive_path)
    finally:
        store.close()
    rep = json.loads(dedupd("consolidate", "-c", str(cfg), "x", "--json", env=env).stdout)
    assert rep["stats"]["problems"] == 0, (k, rep["problems"])
    check_archive(archive, contents, complete=True)
    store = Store(f"sqlite:///{db}")
    try:
        assert prov.count(store, "x") == n_paths, k
    finally:
        store.close()


def steps_in_three_batches(n: int) -> int:
    """The worker's steps for small_sources(more=True) in batches of two (copyworker.py):
    the copies go t.txt + u.txt, big.bin + mid.bin, then the JPEGs' size group (its
    two contents together): five steps per copy, "syncing" and "answered" per batch,
    "ended" once."""
    return 5 * n + 2 * 3 + 1


def test_kill_at_every_step_across_batches(tmp_path: Path) -> None:
    """Batches of two (the test hook): a kill after every step of every batch -- the
    next batch staged while one is synced, the rows of a batch waiting for the next
    batch's sync included -- loses nothing, leaves no partial file under a real
    name, and never lets the index name a missing copy. One step past the last: the
    run completes (so every step was a kill point)."""
    sources, contents = small_sources(tmp_path / "src", more=True)
    n = len(contents)
    n_paths = sum(1 for s in sources for v in manifest(s).values() if v[-1])
    steps = steps_in_three_batches(n)
    for k in range(1, steps + 2):
        archive = tmp_path / f"a{k}"
        archive.mkdir()
        db = tmp_path / f"db{k}.sqlite"
        cfg = write_config(tmp_path / f"c{k}.toml", db, "x", sources, archive)
        env = {KILL_ENV: str(k), BATCH_ENV: "2"}
        r = dedupd("consolidate", "-c", str(cfg), "x", env=env, check=False)
        if k > steps:
            assert r.returncode == 0, (k, r.returncode, r.stderr.decode())
            check_archive(archive, contents, complete=True)
            continue
        assert r.returncode == -9, (k, r.returncode, r.stderr.decode())
        _killed_then_rerun(k, archive, db, cfg, contents, n_paths, {BATCH_ENV: "2"})


def test_source_rewritten_after_its_copy_is_refused(tmp_path: Path) -> None:
    """A source rewritten between its copy and the verify (same size, mtime put back)
    gets no archive name; the next run imports it as it is then."""
    src, archive = tmp_path / "s", tmp_path / "archive"
    write(src / "a.bin", b"a" * 70_000, "2019-01-01")
    write(src / "b.bin", b"b" * 80_000, "2019-01-01")
    archive.mkdir()
    cfg = ConsolidateConfig("m", (src,), archive, layout="{name}")
    fired: list[int] = []

    def on_copy(files: int, total: int, nbytes: int, btotal: int) -> None:
        if files == 1 and not fired:  # a.bin is staged (its bytes read), b.bin is next
            fired.append(1)
            st = os.stat(src / "a.bin")
            (src / "a.bin").write_bytes(b"A" * 70_000)
            os.utime(src / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns))

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        rep = consolidate(store, cfg, Options(False, None, on_copy))
        assert fired
        assert {(os.path.basename(os.fsencode(p["path"])), p["reason"])
                for p in rep.problems} == {(b"a.bin", "changed")}
        assert sorted(archive_files(archive)) == [os.fsencode(archive / "b.bin")]
        assert not [p for p in manifest(archive) if b".dedupd-copy." in p]
        rep2 = consolidate(store, cfg, Options())
        assert [os.path.basename(c["archive"]) for c in rep2.copies] == ["a.bin"]
        assert (archive / "a.bin").read_bytes() == b"A" * 70_000
    finally:
        store.close()


def wait_unlocked(archive: Path) -> None:
    """Block until no process holds the archive's lock (a copy worker that outlived its
    run holds the inherited lock until it exits: on its next pipe write or read)."""
    fd = os.open(archive / ".dedupd-consolidate.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)


@pytest.mark.parametrize("which", ["worker", "run"])
def test_kill_one_process_at_every_step_across_batches(tmp_path: Path, which: str) -> None:
    """The copy worker alone killed at each of its steps (the run must fail with an
    error and place nothing more), or the run alone (the worker finishes at most its
    batch, then exits): no partial file under a real name, no index row naming a
    missing copy, and the next run completes the import."""
    sources, contents = small_sources(tmp_path / "src", more=True)
    n = len(contents)
    n_paths = sum(1 for s in sources for v in manifest(s).values() if v[-1])
    for k in range(1, steps_in_three_batches(n) + 1):
        archive = tmp_path / f"a{k}"
        archive.mkdir()
        db = tmp_path / f"db{k}.sqlite"
        cfg = write_config(tmp_path / f"c{k}.toml", db, "x", sources, archive)
        env = {KILL_ENV: str(k), KILL_WHICH_ENV: which, BATCH_ENV: "2"}
        r = dedupd("consolidate", "-c", str(cfg), "x", env=env, check=False)
        if which == "worker":
            assert r.returncode == 1, (k, r.returncode, r.stderr.decode())
            assert b"copy worker died" in r.stderr, r.stderr
            assert b"Traceback" not in r.stderr
        else:
            assert r.returncode == -9, (k, r.returncode, r.stderr.decode())
        wait_unlocked(archive)
        _killed_then_rerun(k, archive, db, cfg, contents, n_paths, {})


@pytest.mark.parametrize("stop_at", ["written:5", "synced:3"])
def test_sources_rewritten_while_their_batch_is_in_the_worker(tmp_path: Path,
                                                              stop_at: str) -> None:
    """The worker stopped (the test hook) with batch 1 placed, batch 2 staged and its
    sync begun or over but nothing of it verified, batch 3 staged in part or whole
    (its bytes read by the run): every source is rewritten then (same size, mtime
    put back). Batches 2 and 3 must get no name (their sources "changed": the bytes
    staged are the old ones), batch 1 keeps its verified copies, no temp file stays,
    and the next run imports the rest as the sources are now."""
    src, archive = tmp_path / "s", tmp_path / "archive"
    old = {f"f{i}.bin": bytes([65 + i]) * (20_000 + i) for i in range(6)}
    for name, data in old.items():
        write(src / name, data, "2019-01-01")
    archive.mkdir()
    db = tmp_path / "db.sqlite"
    cfg = write_config(tmp_path / "c.toml", db, "x", [src], archive, 'layout = "{name}"\n')
    with import_stopped_at(cfg, "x", stop_at, "--json") as (run, worker):
        assert sorted(p.name for p in archive.iterdir() if p.suffix == ".bin") == [
            "f0.bin", "f1.bin"]  # batch 1 only: the worker verifies a batch after the next
        for name in old:
            st = os.stat(src / name)
            (src / name).write_bytes(name.encode().ljust(len(old[name]), b"!"))
            os.utime(src / name, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.kill(worker, signal.SIGCONT)
        out, err = run.communicate(timeout=120)
    assert b"Traceback" not in err, err
    rep = json.loads(out)
    assert sorted((p["path"].rsplit("/", 1)[1], p["reason"]) for p in rep["problems"]) == [
        (f"f{i}.bin", "changed") for i in range(2, 6)]
    assert {p.name: p.read_bytes() for p in archive.iterdir() if p.suffix == ".bin"} == {
        "f0.bin": old["f0.bin"], "f1.bin": old["f1.bin"]}
    assert not [p for p in manifest(archive) if b".dedupd-copy." in p]
    rep2 = json.loads(dedupd("consolidate", "-c", str(cfg), "x", "--json").stdout)
    assert rep2["stats"]["problems"] == 0, rep2["problems"]
    archived = [p.read_bytes() for p in archive.iterdir() if p.suffix == ".bin"]
    assert sorted(archived) == sorted([old["f0.bin"], old["f1.bin"],
                                       *(p.read_bytes() for p in src.iterdir())])
