"""Failures of the machine under a run are one-line errors with a defined exit
code, never "unexpected error (this is a bug)" and a traceback: an index on a
read-only mount, an immutable index (chattr +i), an index on a full disk, a
volume whose path vanished; and a mergerfs pool configured as plain is noticed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from dedupd import config
from dedupd.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_TEMPFAIL, TemporaryFailure
from dedupd.index.store import Store
from dedupd.volumes import PassOptions, make_pass
from dedupd.volumes.detect import volume_for_path
from tests.fixtures.components import require_tools
from tests.fixtures.mergerfs import MergerPool

EXE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dedupd"


def dedupd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("dedupd: error: index "), r.stderr
    assert "this is a bug" not in r.stderr and "Traceback" not in r.stderr
    return lines[0]


def make_volume(root: Path, n: int = 4) -> Path:
    vol = root / "vol"
    vol.mkdir()
    for i in range(n):
        data = os.urandom(20000)
        (vol / f"a{i}").write_bytes(data)
        (vol / f"b{i}").write_bytes(data)
    return vol


def run_once(vol: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return dedupd("run", "--once", "--settle", "0", "--db", f"sqlite:///{db}", str(vol))


@pytest.fixture
def indexed(tmp_path: Path, loopfs: Callable[[str, str], Path]) -> tuple[Path, Path]:
    """A volume, and its index already written once on a small ext4 of its own."""
    fs = loopfs("ext4", "32M")
    vol = make_volume(tmp_path)
    db = fs / "index.db"
    r = run_once(vol, db)
    assert r.returncode == 0, r.stderr
    return vol, db


def test_index_on_a_read_only_mount(indexed: tuple[Path, Path]) -> None:
    vol, db = indexed
    subprocess.run(["mount", "-o", "remount,ro", str(db.parent)], check=True)
    try:
        r = run_once(vol, db)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(db.parent)], check=True)
    assert r.returncode == EXIT_FAILURE
    assert "mounted read-only" in one_line_error(r)


@contextmanager
def immutable(p: Path) -> Iterator[None]:
    require_tools("chattr")
    subprocess.run(["chattr", "+i", str(p)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(p)], check=True)


def test_immutable_index(indexed: tuple[Path, Path]) -> None:
    vol, db = indexed
    for name in ("index.db-wal", "index.db-shm"):  # a clean close leaves only the file
        (db.parent / name).unlink(missing_ok=True)
    with immutable(db):
        r = run_once(vol, db)
        s = dedupd("scan", "--db", f"sqlite:///{db}", str(vol))
    assert r.returncode == EXIT_FAILURE and s.returncode == EXIT_FAILURE
    assert "chattr +i" in one_line_error(r)
    one_line_error(s)


def fill(fs: Path) -> None:
    """Fill fs to the last block (as root, the reserved blocks too)."""
    subprocess.run(["dd", "if=/dev/zero", f"of={fs}/fill", "bs=1k"], capture_output=True)
    n = 0
    while True:  # the last inodes and fragments
        try:
            (fs / f"f{n}").write_bytes(b"x" * 512)
        except OSError:
            break
        n += 1
    assert os.statvfs(fs).f_bavail == 0


def test_index_on_a_full_disk(indexed: tuple[Path, Path]) -> None:
    vol, db = indexed
    fill(db.parent)
    for i in range(300):  # new files: the index has rows to write
        (vol / f"new{i}").write_bytes(os.urandom(9000))
    r = run_once(vol, db)
    assert r.returncode == EXIT_TEMPFAIL
    assert "the disk is full" in one_line_error(r)


def test_a_volume_path_that_vanished_mid_service(tmp_path: Path) -> None:
    """run checks paths at start (exit 78); a disk unmounted later fails one pass
    with a one-line temporary error the daemon shows and retries."""
    vol = make_volume(tmp_path)
    v = volume_for_path(str(vol))
    store = Store(f"sqlite:///{tmp_path}/i.db")
    try:
        os.rename(vol, tmp_path / "moved")
        with pytest.raises(TemporaryFailure, match=r"volume .*vol: No such file"):
            make_pass(v, store, PassOptions())
    finally:
        store.close()


def test_plain_volume_on_mergerfs_is_told_to_use_pool(
        tmp_path: Path, mergerfs_pool: Callable[..., MergerPool]) -> None:
    pool = mergerfs_pool(2)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[volumes.p]\nkind = 'plain'\npath = '{pool.root}'\n")
    r = dedupd("check-config", "-c", str(cfg))
    assert r.returncode == 0, r.stderr  # it works; it is advice, not an error
    advice = [ln for ln in r.stderr.splitlines() if "advice" in ln]
    assert len(advice) == 1, r.stderr
    assert f"{cfg}: volumes.p.kind:" in advice[0] and 'kind = "pool"' in advice[0]
    for b in pool.branches:
        assert f'"{b}"' in advice[0]
    # the branches it names make a valid pool volume
    fixed = tmp_path / "fixed.toml"
    listed = ", ".join(f"'{b}'" for b in pool.branches)
    fixed.write_text(f"[volumes.p]\nkind = 'pool'\npath = '{pool.root}'\nbranches = [{listed}]\n")
    assert config.load(fixed).volumes["p"].branches == pool.branches
    r = dedupd("check-config", "-c", str(fixed))
    assert r.returncode == 0 and "advice" not in r.stderr
    # a pool missing one of the mount's branches is told which it has
    fixed.write_text(f"[volumes.p]\nkind = 'pool'\npath = '{pool.root}'\n"
                     f"branches = ['{pool.branches[0]}', '{tmp_path}']\n")
    r = dedupd("check-config", "-c", str(fixed))
    assert r.returncode == 0 and "volumes.p.branches: the mergerfs mount" in r.stderr
    assert f'"{pool.branches[1]}"' in r.stderr
    # and the run says it too, in its log
    r = dedupd("run", "--once", "-c", str(cfg), "--db", f"sqlite:///{tmp_path}/i.db")
    assert r.returncode == 0, r.stderr
    assert 'kind = "pool"' in r.stderr


def test_runtime_dir_that_is_a_file_stops_the_daemon_at_start(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[daemon]\nruntime_dir = '{tmp_path}/run'\n")
    r = dedupd("run", "-c", str(cfg), "--db", f"sqlite:///{tmp_path}/i.db")
    assert r.returncode == EXIT_CONFIG
    assert r.stderr.strip().endswith("daemon.runtime_dir: " f"{tmp_path}/run is a file, "
                                     "not a directory")


def test_provenance_writes_map_the_same_way(tmp_path: Path) -> None:
    """Consolidation's provenance rows go through the Store's own connection: the
    same one-line error for an immutable index."""
    from dedupd.errors import DedupdError
    from dedupd.index import provenance as prov

    db = tmp_path / "i.db"
    src = tmp_path / "src.txt"
    src.write_bytes(b"x")
    st = os.stat(src)
    store = Store(f"sqlite:///{db}")
    store.fs_of(st.st_dev, bytes(src))  # the row's filesystem is known: only the row is new
    store.close()
    for name in ("i.db-wal", "i.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    row = prov.Provenance("c", bytes(src), b"/archive/x", b"\0" * 16, 1, st.st_dev, st.st_ino,
                          st.st_mtime_ns, st.st_ctime_ns, 1.0, 1.0)
    with immutable(db), pytest.raises(DedupdError, match="chattr"):
        store = Store(f"sqlite:///{db}")
        try:
            prov.save(store, [row])
        finally:
            store.close()
