"""The by-hand restore recipe of docs/backup-layout.md, run as written with real
tools (aws cli or rclone, sha256sum, zstd, zfs receive) against a real chain: in
moto through an s3 target, and in an rclone remote through an rclone target."""

from __future__ import annotations

import os
import random
import re
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
    """The fenced code block of the doc that starts with '# by-hand restore', verbatim."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", DOC.read_text(), re.M | re.S)
    found = [b for b in blocks if b.startswith("# by-hand restore\n")]
    assert len(found) == 1, "docs/backup-layout.md must hold one by-hand restore block"
    return str(found[0])


def where(how: str, tmp_path: Path, request: pytest.FixtureRequest
          ) -> tuple[dict[str, Any], dict[str, str]]:
    """(the job's target, the recipe's variables naming the same objects)."""
    if how == "s3":
        if shutil.which("aws") is None:
            missing("aws cli not installed")
        moto: Moto = request.getfixturevalue("moto")
        bucket: str = request.getfixturevalue("s3_bucket")
        return (s3_target(moto.url, bucket),
                {"S3": f"s3://{bucket}/host1/", "AWS": f"aws --endpoint-url {moto.url}"})
    conf: Path = request.getfixturevalue("rclone_conf")
    remote = tmp_path / "remote"
    return ({"kind": "rclone", "remote": "loc", "path": str(remote), "config": str(conf)},
            {"REMOTE": f"loc:{remote}/", "RCLONE": f"rclone --config {conf}"})


@pytest.mark.parametrize("how", ["s3", "rclone"])
def test_recipe_restores_a_chain(how: str, tmp_path: Path, zpool: Any,
                                 request: pytest.FixtureRequest) -> None:
    target, variables = where(how, tmp_path, request)
    pool = zpool("256M")
    subprocess.run(["zfs", "create", pool.dataset("data")], check=True)
    src = mountpoint(pool, "data")
    cfg = make_config(tmp_path, pool, target)
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

    env = {k: v for k, v in os.environ.items() if k not in ("S3", "AWS", "REMOTE", "RCLONE")}
    env.update({"JOB": "j", "POINT": ms[2].id, "DEST": pool.dataset("byhand"), **variables})
    r = subprocess.run(["bash", "-c", recipe()], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert tree(mountpoint(pool, "byhand")) == expected
