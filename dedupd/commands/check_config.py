"""`dedupd check-config`: validate the config file and summarise it."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from typing import Any

from dedupd import config, preflight
from dedupd.commands.common import add_common
from dedupd.errors import EXIT_CONFIG, one_line
from dedupd.files.fsid import host_identity
from dedupd.output import print_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check-config", help="validate the config file",
        description="Read and validate the config (default /etc/dedupd/dedupd.toml), "
        "then check it against this machine: volume paths exist and are directories, "
        "volumes do not overlap (also through symlinks), archives are apart from their "
        "sources, runtime_dir can be a directory, and each volume's kind fits the "
        "filesystem under it. Errors name the file, the key and the problem; exit status "
        "78 on any error. Advice (a setting that works but another fits better) is "
        "printed without failing.")
    p.add_argument("--file-only", action="store_true",
                   help="check only the file, not this machine (paths, mounts): for a "
                   "config meant for another host")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = args.config or config.DEFAULT_CONFIG
    cfg = config.load(path)  # must exist here: checking nothing is not a pass
    found = preflight.Findings() if args.file_only else preflight.check(cfg)
    if args.json:
        errors = found.all_errors
        print_json({**json_safe(asdict(cfg)), "ok": not errors,
                    "errors": [str(e) for e in errors], "advice": found.advice})
        return EXIT_CONFIG if errors else 0
    for e in found.all_errors:
        sys.stderr.write(f"dedupd: error: {one_line(str(e))}\n")
    for a in found.advice:
        sys.stderr.write(f"dedupd: advice: {one_line(a)}\n")
    if found.all_errors:
        return EXIT_CONFIG
    print(f"{path}: OK")
    host = host_identity(cfg.database.host)
    print(f"  host: {host.name} (machine id {host.machine_id})")
    for name, v in cfg.volumes.items():
        print(f"  volume {name}: {v.kind} at {v.path} ({v.mode})")
    for name, b in cfg.backups.items():
        print(f"  backup {name}: {b.dataset} -> {b.target.kind}")
    for name, c in cfg.consolidate.items():
        print(f"  consolidate {name}: {len(c.sources)} sources -> {c.archive}")
    return 0


def json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [json_safe(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v
