"""TOML config -> frozen dataclasses.

Every error names the file, the key and what is wrong (ConfigError, exit 78).
Unknown keys are errors too: a typo must not silently fall back to a default.
The example `etc/dedupd.toml` documents every key; tests check they agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dedupd import config_rules as rules
from dedupd import defaults
from dedupd.config_table import Table
from dedupd.errors import ConfigError

DEFAULT_CONFIG, DEFAULT_STATE_DIR, DEFAULT_DB_URL = (  # here too: config.DEFAULT_CONFIG
    Path(defaults.DEFAULT_CONFIG), Path(defaults.DEFAULT_STATE_DIR), defaults.DEFAULT_DB_URL)

VOLUME_KINDS = ("btrfs", "xfs", "zfs", "plain", "pool")
# Kinds whose dedupe replaces or deletes user files: dry-run until told otherwise.
DESTRUCTIVE_KINDS = ("zfs", "plain", "pool")
MODES = ("apply", "dry-run")
COMPRESSIONS = ("zstd", "gzip", "pigz", "none")
TARGET_KINDS = ("s3", "rclone")
MAX_CHUNK = 5 * 1024**3  # S3's PutObject limit
_FULL_EVERY = re.compile(r"^\s*(never|\d+|\d+(\.\d+)?[dhms])\s*$", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True)
class DaemonConfig:
    runtime_dir: Path = Path("/run/dedupd")
    nice: int = 19
    ionice: str = "idle"
    log_level: str = "info"
    log_json: bool = False
    admin_group: str = "dedupd"
    stop_timeout: float = 30.0
    socket_group: str = "dedupd"
    pass_interval: float = 300.0
    client_idle_timeout: float = 30.0
    metrics_address: str = ""  # HOST:PORT of the Prometheus endpoint; "" = none


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = DEFAULT_DB_URL
    host: str | None = None  # this host's name in a shared inventory; None: the machine id


@dataclass(frozen=True)
class VolumeConfig:
    name: str
    kind: str
    path: Path
    settle_seconds: int = 300
    min_size: int = 8192
    exclude: tuple[str, ...] = ()
    mode: str = "apply"
    cross_mounts: bool = False
    max_backoff_hours: float = 72.0
    max_generation_gap: int = 1_000_000
    min_hours_between_full_scans: float = 24.0
    full_scan_hour: int | None = None
    dedup_backend: str = "ioctl"
    dedup_batch_size: int = 120
    dedup_snapshots: bool = False
    vacuum_interval_days: float = 7.0
    dedup_reset_interval_days: float = 30.0
    pool_root: Path | None = None
    branches: tuple[Path, ...] = ()
    primary_paths: tuple[Path, ...] = ()
    link_primary_pairs: bool = False
    quarantine_dir: Path | None = None
    quarantine_days: float = 30.0
    zfs_full_walk_days: float = 7.0

    @property
    def apply(self) -> bool:
        return self.mode == "apply"


@dataclass(frozen=True)
class TargetConfig:
    kind: str
    bucket: str = ""
    prefix: str = ""
    region: str = "us-east-1"
    endpoint_url: str | None = None
    storage_class: str = "STANDARD"
    manifest_storage_class: str = "STANDARD"
    remote: str = ""
    path: str = ""
    config: Path | None = None
    # Retries of one request to the target (S3 call or rclone command): attempts
    # in all, and the exponential backoff between them (base doubling up to max).
    retries: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    timeout_seconds: float = 300.0


@dataclass(frozen=True)
class RetentionConfig:
    keep_local: int = 3
    keep_remote: int = 7


@dataclass(frozen=True)
class BackupConfig:
    name: str
    dataset: str
    target: TargetConfig
    snapshot_prefix: str = "dedupd-"
    compression: str = "zstd"
    compression_level: int = 3
    chunk_size: int = 256 * 1024**2
    raw: bool | None = None  # None: raw exactly when the dataset is encrypted
    schedule: str = "daily 03:00"
    full_every: str = "30d"
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    spool_dir: Path | None = None  # where one chunk is spooled (default: the temp dir)


@dataclass(frozen=True)
class ConsolidateConfig:
    name: str
    sources: tuple[Path, ...]
    archive: Path
    layout: str = "{year}/{month:02d}/{name}"
    date_from: tuple[str, ...] = ("exif", "mtime")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    on_name_collision: str = "suffix"
    undated_dir: str = "undated"
    link_duplicates: bool = True
    prune_sources: bool = False
    quarantine_dir: Path | None = None


@dataclass(frozen=True)
class Config:
    source: str
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    volumes: Mapping[str, VolumeConfig] = field(default_factory=dict)
    backups: Mapping[str, BackupConfig] = field(default_factory=dict)
    consolidate: Mapping[str, ConsolidateConfig] = field(default_factory=dict)


def load(path: Path | str = DEFAULT_CONFIG, *, missing_ok: bool = False) -> Config:
    """Read and validate a config file. Raises ConfigError (exit 78) on any problem."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return Config(source="(defaults)")
        raise ConfigError(file, "-", "file not found") from None
    except OSError as e:
        raise ConfigError(file, "-", f"cannot read: {e.strerror}") from None
    import tomllib  # here: a scan without a config file never parses TOML (3 ms)

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file, "-", "not valid UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "-", f"TOML syntax error: {e}") from None
    return parse(data, file)


def parse(data: dict[str, Any], file: str = "<config>") -> Config:
    top = Table(file, "", data)
    daemon = _daemon(top.sub("daemon"))
    database = _database(top.sub("database"))
    vols, bks, cons = top.sub("volumes"), top.sub("backups"), top.sub("consolidate")
    for section, t in (("volumes", vols), ("backups", bks), ("consolidate", cons)):
        for n in t.names():
            rules.check_name(file, section, n)
    volumes = {n: _volume(vols.sub(n), n) for n in vols.names()}
    backups = {n: _backup(bks.sub(n), n) for n in bks.names()}
    consolidate = {n: _consolidate(cons.sub(n), n) for n in cons.names()}
    top.done()
    rules.check_volumes(file, volumes)
    rules.check_archives_apart(file, volumes, consolidate, DESTRUCTIVE_KINDS)
    return Config(file, daemon, database, volumes, backups, consolidate)


def _daemon(t: Table) -> DaemonConfig:
    d = DaemonConfig(
        runtime_dir=t.path("runtime_dir", DaemonConfig.runtime_dir) or DaemonConfig.runtime_dir,
        nice=t.integer("nice", 19, lo=-20, hi=19),
        ionice=t.text("ionice", "idle", choices=("idle", "best-effort", "none")),
        log_level=t.text("log_level", "info", choices=("debug", "info", "warning", "error")),
        log_json=t.flag("log_json", False),
        admin_group=t.text("admin_group", "dedupd"),
        stop_timeout=t.number("stop_timeout", 30.0),
        socket_group=t.text("socket_group", "dedupd"),
        pass_interval=t.number("pass_interval", 300.0),
        client_idle_timeout=t.number("client_idle_timeout", 30.0, lo=0.1),
        metrics_address=_metrics_address(t),
    )
    t.done()
    return d


def _metrics_address(t: Table) -> str:
    value = str(t.text("metrics_address", "")).strip()
    if value:
        try:
            parse_host_port(value)
        except ValueError as e:
            raise t.err("metrics_address", str(e)) from None
    return value


def parse_host_port(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port}")
    if not sep or not host or any(c in host for c in "[]/ "):
        raise ValueError(f"must be HOST:PORT, e.g. 127.0.0.1:9577 (empty: no metrics); "
                         f"got {value!r}")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1-65535; got {port!r}")
    return host, int(port)


def _database(t: Table) -> DatabaseConfig:
    url = t.text("url", DEFAULT_DB_URL)
    if not url.startswith(defaults.DB_URL_SCHEMES):
        raise t.err("url", f"must be a sqlite:/// or postgresql:// URL; got {url!r}")
    host = t.text("host", None)
    if host is not None:
        rules.check_host(t.file, t.key("host"), host)
    t.done()
    return DatabaseConfig(url=url, host=host)


def _volume(t: Table, name: str) -> VolumeConfig:
    kind = t.text("kind", None, choices=VOLUME_KINDS)
    if kind is None:
        raise t.err("kind", f"is required (one of {', '.join(VOLUME_KINDS)})")
    default_mode = "dry-run" if kind in DESTRUCTIVE_KINDS else "apply"
    v = VolumeConfig(
        name=name,
        kind=kind,
        path=t.required_path("path"),
        settle_seconds=t.integer("settle_seconds", 300, lo=0),
        min_size=t.integer("min_size", 8192, lo=1),
        exclude=t.strs("exclude"),
        mode=t.text("mode", default_mode, choices=MODES),
        cross_mounts=t.flag("cross_mounts", False),
        max_backoff_hours=t.number("max_backoff_hours", 72.0),
        max_generation_gap=t.integer("max_generation_gap", 1_000_000, lo=1),
        min_hours_between_full_scans=t.number("min_hours_between_full_scans", 24.0),
        full_scan_hour=t.integer("full_scan_hour", None, lo=0, hi=23),
        dedup_backend=t.text("dedup_backend", "ioctl", choices=("ioctl", "duperemove")),
        dedup_batch_size=t.integer("dedup_batch_size", 120, lo=1, hi=120),
        dedup_snapshots=t.flag("dedup_snapshots", False),
        vacuum_interval_days=t.number("vacuum_interval_days", 7.0),
        dedup_reset_interval_days=t.number("dedup_reset_interval_days", 30.0),
        pool_root=t.path("pool_root", None),
        branches=t.paths("branches"),
        primary_paths=t.paths("primary_paths"),
        link_primary_pairs=t.flag("link_primary_pairs", False),
        quarantine_dir=t.path("quarantine_dir", None),
        quarantine_days=t.number("quarantine_days", 30.0),
        zfs_full_walk_days=t.number("zfs_full_walk_days", 7.0),
    )
    if kind == "pool" and len(v.branches) < 2:
        raise t.err("branches", "a pool volume needs at least two branches")
    if kind != "pool" and v.branches:
        raise t.err("branches", f"only pool volumes have branches (this one is {kind})")
    rules.check_branches(t.file, name, v.branches)
    t.done()
    return v


def _target(t: Table) -> TargetConfig:
    kind = t.text("kind", None, choices=TARGET_KINDS)
    if kind is None:
        raise t.err("kind", "is required (s3 or rclone)")
    tc = TargetConfig(
        kind=kind,
        bucket=t.text("bucket", ""),
        prefix=t.text("prefix", ""),
        region=t.text("region", "us-east-1"),
        endpoint_url=t.text("endpoint_url", None),
        storage_class=t.text("storage_class", "STANDARD"),
        manifest_storage_class=t.text("manifest_storage_class", "STANDARD"),
        remote=t.text("remote", ""),
        path=t.text("path", ""),
        config=t.path("config", None),
        retries=t.integer("retries", 5, lo=1, hi=100),
        retry_base_seconds=t.number("retry_base_seconds", 1.0),
        retry_max_seconds=t.number("retry_max_seconds", 30.0),
        timeout_seconds=t.number("timeout_seconds", 300.0, lo=1.0),
    )
    if kind == "s3" and not tc.bucket:
        raise t.err("bucket", "is required for an s3 target")
    if kind == "rclone" and not tc.remote:
        raise t.err("remote", "is required for an rclone target")
    t.done()
    return tc


def _backup(t: Table, name: str) -> BackupConfig:
    rt = t.sub("retention")
    retention = RetentionConfig(
        keep_local=rt.integer("keep_local", 3, lo=1), keep_remote=rt.integer("keep_remote", 7, lo=1)
    )
    rt.done()
    b = BackupConfig(
        name=name,
        dataset=t.required_str("dataset"),
        target=_target(t.sub("target")),
        snapshot_prefix=t.text("snapshot_prefix", "dedupd-"),
        compression=t.text("compression", "zstd", choices=COMPRESSIONS),
        compression_level=t.integer("compression_level", 3, lo=1, hi=19),
        chunk_size=t.integer("chunk_size", 256 * 1024**2, lo=1024 * 1024, hi=MAX_CHUNK),
        raw=t.optional_flag("raw"),
        schedule=t.text("schedule", "daily 03:00"),
        full_every=t.text("full_every", "30d"),
        retention=retention,
        spool_dir=t.path("spool_dir", None),
    )
    from dedupd.schedule import parse_schedule  # with datetime: only configs with backups

    parse_schedule(b.schedule, t.key("schedule"), t.file)
    if not _FULL_EVERY.match(b.full_every):
        raise t.err("full_every", f"must be an age like 30d/12h or a chain length like 10 "
                    f"(or never); got {b.full_every!r}")
    t.done()
    return b


def _consolidate(t: Table, name: str) -> ConsolidateConfig:
    sources = t.paths("sources")
    if not sources:
        raise t.err("sources", "needs at least one source directory")
    c = ConsolidateConfig(
        name=name,
        sources=sources,
        archive=t.required_path("archive"),
        layout=t.text("layout", "{year}/{month:02d}/{name}"),
        date_from=t.strs("date_from", ("exif", "mtime")),
        include=t.strs("include"),
        exclude=t.strs("exclude"),
        on_name_collision=t.text("on_name_collision", "suffix", choices=("suffix", "skip")),
        undated_dir=t.text("undated_dir", "undated"),
        link_duplicates=t.flag("link_duplicates", True),
        prune_sources=t.flag("prune_sources", False),
        quarantine_dir=t.path("quarantine_dir", None),
    )
    bad = [d for d in c.date_from if d not in ("exif", "mtime")]
    if bad:
        raise t.err("date_from", f"unknown date source {bad[0]!r} (use exif, mtime)")
    from dedupd.consolidate.layout import check_layout  # with datetime: only these configs

    check_layout(name, c.layout, c.undated_dir, t.file)
    rules.check_archive(t.file, name, c.archive, c.sources)
    t.done()
    return c
