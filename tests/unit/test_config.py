"""Config parsing: defaults, every error names file + key, the example covers every key."""

from __future__ import annotations

import dataclasses
import subprocess
import tomllib
from pathlib import Path

import pytest

from dedupd import config
from dedupd.errors import EXIT_CONFIG, ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "etc" / "dedupd.toml"


def load_text(tmp_path: Path, text: str) -> config.Config:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return config.load(p)


def test_example_config_is_valid_and_documents_every_key() -> None:
    cfg = config.load(EXAMPLE)
    raw = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text()
    assert cfg.volumes["photos"].kind == "btrfs"
    assert cfg.volumes["pool"].mode == "dry-run"
    tables = {
        config.DaemonConfig: "daemon", config.DatabaseConfig: "database",
        config.VolumeConfig: "volumes", config.BackupConfig: "backups",
        config.TargetConfig: "target", config.RetentionConfig: "retention",
        config.ConsolidateConfig: "consolidate",
    }
    for cls in tables:
        for f in dataclasses.fields(cls):
            if f.name in ("name", "retention", "target"):
                continue
            # set, or shown commented out with its default
            assert f"{f.name} =" in text, f"{cls.__name__}.{f.name} missing from the example"
    assert raw["database"]["url"] == config.DEFAULT_DB_URL


@pytest.mark.parametrize(("text", "key", "words"), [
    ("[daemon]\nnice = 40\n", "daemon.nice", "<= 19"),
    ("[daemon]\nnicee = 1\n", "daemon.nicee", "unknown key"),
    ("[volumes.a]\npath = '/x'\n", "volumes.a.kind", "required"),
    ("[volumes.a]\nkind = 'ntfs'\npath = '/x'\n", "volumes.a.kind", "one of"),
    ("[volumes.a]\nkind = 'plain'\npath = 'x'\n", "volumes.a.path", "absolute"),
    ("[volumes.a]\nkind = 'plain'\npath = '/x'\nmin_size = 'big'\n", "volumes.a.min_size",
     "integer"),
    ("[volumes.a]\nkind = 'plain'\npath = '/x'\nexclude = [1]\n", "volumes.a.exclude", "strings"),
    ("[volumes.a]\nkind = 'pool'\npath = '/x'\nbranches = ['/b1']\n", "volumes.a.branches",
     "two"),
    ("[database]\nurl = 'mysql://x'\n", "database.url", "sqlite"),
    ("[database]\nhost = ''\n", "database.host", "empty"),
    ("[database]\nhost = '  '\n", "database.host", "empty"),
    ('[database]\nhost = "nas\\u0007"\n', "database.host", "printable"),
    ('[database]\nhost = "nas\\nbox"\n', "database.host", "printable"),
    (f"[database]\nhost = '{'h' * 201}'\n", "database.host", "at most 200"),
    ("[database]\nhost = 7\n", "database.host", "a string"),
    ("[backups.b]\ndataset = 't/d'\n[backups.b.target]\nkind = 's3'\n",
     "backups.b.target.bucket", "required"),
    ("[backups.b]\ndataset = 't/d'\nchunk_size = 10\n[backups.b.target]\nkind='rclone'\n"
     "remote='r'\n", "backups.b.chunk_size", ">="),
    ("[consolidate.c]\narchive = '/a'\n", "consolidate.c.sources", "at least one"),
    ("volumes = 3\n", "volumes", "table"),
    ("[daemon]\nlog_json = 'yes'\n", "daemon.log_json", "true or false"),
    ("[volumes.a]\nkind = 'zfs'\npath = '/x'\nzfs_full_walk_days = -1\n",
     "volumes.a.zfs_full_walk_days", ">= 0"),
    ("[volumes.a]\nkind = 'zfs'\npath = '/x'\nzfs_full_walk_days = 'weekly'\n",
     "volumes.a.zfs_full_walk_days", "a number"),
])
def test_errors_name_file_key_and_problem(tmp_path: Path, text: str, key: str,
                                          words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_text(tmp_path, text)
    assert ei.value.key == key
    assert words in ei.value.problem
    assert str(tmp_path / "c.toml") in str(ei.value)
    assert ei.value.exit_code == EXIT_CONFIG


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TOML syntax"):
        load_text(tmp_path, "[daemon\n")
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")
    assert config.load(tmp_path / "nope.toml", missing_ok=True).volumes == {}


def test_destructive_kinds_default_to_dry_run(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[volumes.z]\nkind='zfs'\npath='/z'\n"
                    "[volumes.b]\nkind='btrfs'\npath='/b'\n")
    assert not cfg.volumes["z"].apply and cfg.volumes["b"].apply


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    exe = ROOT / ".venv" / "bin" / "dedupd"
    ok = subprocess.run([str(exe), "check-config", "--file-only", "-c", str(EXAMPLE)],
                        capture_output=True)
    assert ok.returncode == 0 and b"OK" in ok.stdout
    # on this machine the example's paths do not exist: each is named
    here = subprocess.run([str(exe), "check-config", "-c", str(EXAMPLE)], capture_output=True)
    assert here.returncode == 78
    assert f"{EXAMPLE}: volumes.photos.path: /".encode() in here.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[volumes.x]\nkind = 'btrfs'\npath = 'relative'\n")
    r = subprocess.run([str(exe), "check-config", "-c", str(bad)], capture_output=True)
    assert r.returncode == 78
    assert f"{bad}: volumes.x.path: must be an absolute path" in r.stderr.decode()
    r = subprocess.run([str(exe), "check-config", "-c", str(tmp_path / "missing.toml")],
                       capture_output=True)
    assert r.returncode == 78 and b"file not found" in r.stderr


def test_check_config_names_this_host(tmp_path: Path) -> None:
    """`[database] host` is what check-config reports; without it the machine id."""
    exe = ROOT / ".venv" / "bin" / "dedupd"
    machine = Path("/etc/machine-id").read_text().strip()
    named = tmp_path / "named.toml"
    named.write_text("[database]\nhost = 'nas1'\n")
    r = subprocess.run([str(exe), "check-config", "--file-only", "-c", str(named)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"host: nas1 (machine id {machine})" in r.stdout
    plain = tmp_path / "plain.toml"
    plain.write_text("[database]\n")
    r = subprocess.run([str(exe), "check-config", "--file-only", "-c", str(plain)],
                       capture_output=True, text=True)
    assert f"host: {machine} (machine id {machine})" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[database]\nhost = "a\\tb"\n')
    r = subprocess.run([str(exe), "check-config", "--file-only", "-c", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 78
    assert f"{bad}: database.host: must be printable" in r.stderr
