"""S3 credentials as docs/backup-layout.md ("S3 credentials") describes them, against
the real moto server: none, a missing profile or a key without its secret is one
line and exit 78 for every command that talks to the store; a credentials file
named the documented way works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dedupd.errors import EXIT_CONFIG
from tests.fixtures.s3 import Moto
from tests.integration.backup_util import config_dict, owned_snapshots, s3_target, write_toml

pytestmark = pytest.mark.integration


def bare_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment without any AWS credentials. The instance-metadata lookup
    is switched off: it would send a request off this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"HOME": str(tmp), "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials"),
                "AWS_CONFIG_FILE": str(tmp / "no-config"), **extra})
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with exactly this environment (backup_util.dedupd adds os.environ,
    where the moto fixture put its test key)."""
    return subprocess.run([sys.executable, "-m", "dedupd", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_without_credentials_one_line_and_exit_78(tmp_path: Path, zpool: Any, moto: Moto,
                                                   s3_bucket: str) -> None:
    pool = zpool("128M")
    ds = pool.dataset("data")
    subprocess.run(["zfs", "create", ds], check=True)
    conf = write_toml(tmp_path / "dedupd.toml",
                      config_dict(tmp_path, pool, s3_target(moto.url, s3_bucket)))
    c = ["-c", str(conf)]
    cases = {
        "none": bare_env(tmp_path),
        "missing profile": bare_env(tmp_path, AWS_PROFILE="nosuchprofile"),
        "key without secret": bare_env(tmp_path, AWS_ACCESS_KEY_ID="testing"),
    }
    for why, env in cases.items():
        for cmd in (["backup", "j"], ["backups", "j"], ["verify", "j"],
                    ["restore", "j", "--target", pool.dataset("back"), "--yes"]):
            r = cli(env, *cmd, *c)
            assert r.returncode == EXIT_CONFIG, (why, cmd, r.stderr)
            assert len(r.stderr.splitlines()) == 1, (why, cmd, r.stderr)
            assert r.stderr.startswith(f"dedupd: error: s3://{s3_bucket}/host1/"), r.stderr
            assert "AWS_ACCESS_KEY_ID" in r.stderr and "Traceback" not in r.stderr
    assert owned_snapshots(ds) == []  # refused before anything was snapshotted or sent

    # the documented credentials file (moto takes any key) makes the same commands work
    creds = tmp_path / "credentials"
    creds.write_text("[backup]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    env = bare_env(tmp_path, AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_PROFILE="backup")
    r = cli(env, "backup", "j", "--json", *c)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["full"] is True
    r = cli(env, "backups", "j", "--json", *c)
    assert r.returncode == 0 and len(json.loads(r.stdout)["restore_points"]) == 1, r.stderr
