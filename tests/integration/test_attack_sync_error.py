"""The archive's filesystem fails (an I/O error: here ext4 shut down without flushing
its journal, as a dying disk leaves it) after a batch's names were placed and before
the sync that makes them durable. That syncfs fails (EIO): the run must fail
clearly and hand no row to the index for names the failure may have lost.

Before: a failing syncfs was taken for a missing one (fsops.copy.sync_fd_filesystem
fell back to sync(2), which reports nothing), the worker answered the next batch
"synced", and the run wrote the index rows of names that were gone once the
filesystem was mounted again: the index named copies a crash had lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd.index import provenance as prov
from dedupd.index.store import Store
from tests.fixtures.components import require_tools
from tests.fixtures.consolidate import import_stopped_at, write, write_config

pytestmark = pytest.mark.integration


def test_archive_io_error_before_a_batch_sync_writes_no_row_for_lost_names(
        tmp_path: Path, loopfs: Callable[[str, str], Path]) -> None:
    require_tools("xfs_io")
    mnt = loopfs("ext4", "64M")
    # no periodic journal commit during the test: only dedupd's syncs make names durable
    subprocess.run(["mount", "-o", "remount,commit=600", str(mnt)], check=True)
    archive = mnt / "archive"
    archive.mkdir()
    os.sync()
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"f{i}.bin", os.urandom(20_000 + i), "2019-01-01")
    db = tmp_path / "db.sqlite"
    cfg = write_config(tmp_path / "c.toml", db, "x", [src], archive, 'layout = "{name}"\n')
    # stopped with batch 1's names placed (and answered); batch 2's sync began before
    # those links (it overlaps them) and makes none of them durable: batch 3's would
    with import_stopped_at(cfg, "x", "answered:1") as (run, worker):
        assert sorted(p.name for p in archive.glob("*.bin")) == ["f0.bin", "f1.bin"]
        # the disk fails: its journal is not flushed (xfs_io's shutdown without -f)
        subprocess.run(["xfs_io", "-x", "-c", "shutdown", str(mnt)], check=True,
                       capture_output=True)
        os.kill(worker, signal.SIGCONT)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 1, (run.returncode, err)
    assert b"Traceback" not in err, err
    # the machine comes back: the filesystem mounted again, its journal replayed
    img = mnt.parent / "ext4.img"  # the loopfs fixture's image beside its mount point
    assert img.is_file()
    subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    store = Store(f"sqlite:///{db}")
    try:
        rows = prov.load(store, "x")
    finally:
        store.close()
    for path, row in rows.items():  # each row names a file with its source's bytes
        where = Path(os.fsdecode(row.archive_path))
        assert where.exists(), (path, "its archive file was lost, its row written")
        assert where.read_bytes() == Path(os.fsdecode(path)).read_bytes()


def test_a_run_into_an_archive_on_a_failed_disk_is_a_clear_error(
        tmp_path: Path, loopfs: Callable[[str, str], Path]) -> None:
    """The archive's filesystem has failed (shut down, every access EIO) before the run:
    a clear error naming what failed, exit 1. Before: "unexpected error (this is a
    bug)" and a traceback from the open of the archive's lock file."""
    require_tools("xfs_io")
    mnt = loopfs("ext4", "64M")
    archive = mnt / "archive"
    archive.mkdir()
    src = tmp_path / "src"
    write(src / "a.bin", os.urandom(20_000), "2019-01-01")
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "x", [src], archive)
    subprocess.run(["xfs_io", "-x", "-c", "shutdown", str(mnt)], check=True,
                   capture_output=True)
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "-c", str(cfg), "x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "this is a bug" not in r.stderr, r.stderr
    assert r.stderr.startswith("dedupd: error: Input/output error"), r.stderr
