"""The by-hand restore recipe of docs/backup-layout.md, run as written with real
tools (aws cli, sha256sum, zstd, zfs receive) against a real chain in moto."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup import catalog, run_job
from dedupd.backup.targets import make_target
from tests.fixtures.components import missing
from tests.fixtures.s3 import Moto
from tests.integration.backup_util import (
    make_config,
    mountpoint,
    s3_target,
    store_for,
    tree,
    write_files,
)

pytestmark = pytest.mark.integration
DOC = Path(__file__).resolve().parents[2] / "docs" / "backup-layout.md"


def recipe() -> str:
    text = DOC.read_text()
    start = text.index("# by-hand restore\n")
    return text[start: text.index("```", start)]


def test_recipe_restores_a_chain(tmp_path: Path, zpool: Any, moto: Moto,
                                 s3_bucket: str) -> None:
    if shutil.which("aws") is None:
        missing("aws cli not installed")
    pool = zpool("256M")
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    src = mountpoint(pool, "data")
    cfg = make_config(tmp_path, pool, s3_target(moto.url, s3_bucket))
    store = store_for(cfg)
    rng = random.Random(11)
    try:
        for step in range(3):
            write_files(src / f"d{step}", rng, 4, 300_000)
            (src / "changing.txt").write_text(f"step {step}\n" * 1000)
            run_job(cfg, "j", store)
    finally:
        store.close()
    expected = tree(src)
    ms = catalog.load(make_target(cfg.backups["j"].target), "j")
    assert len(ms) == 3 and ms[0].full and not ms[2].full

    env = {**os.environ, "S3": f"s3://{s3_bucket}/host1/", "JOB": "j", "POINT": ms[2].id,
           "DEST": pool.dataset("byhand"), "AWS": f"aws --endpoint-url {moto.url}"}
    r = subprocess.run(["bash", "-c", recipe()], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert tree(mountpoint(pool, "byhand")) == expected
