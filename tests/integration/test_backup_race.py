"""(Named test_backup_*, not test_attack_*: its session-wide moto server, started before
test_attack_early_walk and test_attack_feeder_killed, was counted among their
children.) `dedupd backup` runs of one job racing each other under the start-up order of
backup/start.py (the job lock, then the new snapshot in a thread, then the
imports and the index): a run that finds the job locked exits 75 having taken no
snapshot; two started together end with one snapshot per backup made, none left
over, and the chain restorable."""

from __future__ import annotations

import fcntl
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup import catalog
from dedupd.backup.targets import make_target
from tests.fixtures.s3 import Moto
from tests.integration.backup_util import (
    config_dict,
    dedupd,
    make_config,
    mountpoint,
    owned_snapshots,
    s3_target,
    write_files,
    write_toml,
)

pytestmark = pytest.mark.integration


def _setup(tmp_path: Path, zpool: Any, moto: Moto, s3_bucket: str) -> tuple[Any, Path]:
    pool = zpool("256M")
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    write_files(mountpoint(pool, "data"), random.Random(7), 8, 256 * 1024)
    conf = write_toml(tmp_path / "dedupd.toml",
                      config_dict(tmp_path, pool, s3_target(moto.url, s3_bucket)))
    return pool, conf


def test_a_run_of_a_locked_job_takes_no_snapshot(tmp_path: Path, zpool: Any, moto: Moto,
                                                 s3_bucket: str) -> None:
    pool, conf = _setup(tmp_path, zpool, moto, s3_bucket)
    first = dedupd("backup", "j", "-c", str(conf))
    assert first.returncode == 0, first.stderr
    before = owned_snapshots(pool.dataset("data"))
    fd = os.open(tmp_path / "run" / "backup-j.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the job runs elsewhere (the daemon, say)
        r = dedupd("backup", "j", "-c", str(conf))
        assert r.returncode == 75, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr and "already running" in r.stderr
        assert owned_snapshots(pool.dataset("data")) == before
    finally:
        os.close(fd)


def test_two_runs_started_together(tmp_path: Path, zpool: Any, moto: Moto,
                                   s3_bucket: str) -> None:
    pool, conf = _setup(tmp_path, zpool, moto, s3_bucket)
    runs = [subprocess.Popen([sys.executable, "-m", "dedupd", "backup", "j", "--json", "-c",
                              str(conf)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outs = [r.communicate(timeout=300) for r in runs]
    codes = sorted(r.returncode for r in runs)
    assert codes in ([0, 0], [0, 75]), (codes, [e for _, e in outs])
    for (_, err), r in zip(outs, runs, strict=True):
        assert "Traceback" not in err, err
        if r.returncode == 75:
            assert "already running" in err, err
    made = [json.loads(o) for (o, _), r in zip(outs, runs, strict=True) if r.returncode == 0]
    cfg = make_config(tmp_path, pool, s3_target(moto.url, s3_bucket))
    ms = catalog.load(make_target(cfg.backups["j"].target), "j")
    assert len(ms) == len(made)
    # one snapshot per backup made: none taken ahead by the refused run stays
    assert sorted(owned_snapshots(pool.dataset("data"))) == sorted(m.snapshot for m in ms)
