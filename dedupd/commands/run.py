"""`dedupd run`: serve the configured volumes; `--once` does one pass and exits."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store, parse_size
from dedupd.config import Config, VolumeConfig
from dedupd.errors import UsageError
from dedupd.output import human_bytes, print_json, show_path
from dedupd.priority import apply_priority
from dedupd.volumes import PassOptions, PassReport, make_pass
from dedupd.volumes.detect import volume_for_path

HELP = """\
Deduplicate volumes. With --once: one pass over every volume (those in the
config, or the paths or volume names given) and exit: the mode for cron and
systemd timers.

Destructive kinds (plain, zfs, pool) only describe what they would do until
the config says mode = "apply" or --apply is given; --dry-run never changes
anything, whatever the config says.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="deduplicate the configured volumes",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("volumes", nargs="*", metavar="VOLUME",
                   help="volume names from the config or paths (default: all configured)")
    p.add_argument("--once", action="store_true", help="one pass over everything, then exit")
    p.add_argument("--apply", action="store_true",
                   help="act even where the config says mode = dry-run")
    p.add_argument("--force-rescan", action="store_true",
                   help="walk the whole volume instead of tracking changes")
    p.add_argument("--settle", type=int, default=None, metavar="SECONDS",
                   help="override settle_seconds for this run")
    p.add_argument("--min-size", type=parse_size, default=None, metavar="N",
                   help="override min_size for this run")
    add_common(p, dry_run=True)
    p.set_defaults(func=run)


def select_volumes(cfg: Config, names: list[str], args: argparse.Namespace) -> list[VolumeConfig]:
    """Volumes by config name or by path; all configured ones when none is named."""
    chosen: list[VolumeConfig] = []
    for n in names or list(cfg.volumes):
        if n in cfg.volumes:
            chosen.append(cfg.volumes[n])
        elif os.path.isdir(n):
            chosen.append(volume_for_path(n))
        else:
            raise UsageError(f"{n}: neither a configured volume nor a directory")
    if not chosen:
        raise UsageError("no volumes: name a path or configure [volumes.NAME]")
    over: dict[str, Any] = {}
    if args.settle is not None:
        over["settle_seconds"] = args.settle
    if args.min_size is not None:
        over["min_size"] = args.min_size
    if args.apply:
        over["mode"] = "apply"
    return [dataclasses.replace(v, **over) for v in chosen]


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    vols = select_volumes(cfg, args.volumes, args)
    if not args.once:
        raise UsageError("daemon mode is not available yet; use --once")
    apply_priority(cfg.daemon)
    store = open_store(args, cfg)
    reports = []
    try:
        for v in vols:
            vp = make_pass(v, store, PassOptions(dry_run=args.dry_run,
                                                 force_rescan=args.force_rescan))
            for _ in vp.steps():
                pass
            reports.append(vp.report())
    finally:
        store.close()
    if args.json:
        print_json({"volumes": [r.as_json() for r in reports]})
    else:
        for r in reports:
            print_report(r)
    return 0


def print_report(r: PassReport) -> None:
    out = sys.stdout
    verb = "would" if r.dry_run else "did"
    out.write(f"{r.volume} ({r.kind}{', dry run' if r.dry_run else ''}): "
              f"{r.counters.get('files_seen', 0)} files seen, "
              f"{r.counters.get('groups', 0)} duplicate groups, "
              f"{human_bytes(r.bytes_reclaimed)} reclaimed in {r.seconds:.1f}s\n")
    for a in r.actions:
        paths = a.get("paths") or []
        out.write(f"  {verb} {a.get('action')}: " + " ".join(show_path(p) for p in paths) + "\n")
    for p in r.problems:
        out.write(f"  {p['reason']}: {show_path(p['path'])} {p.get('detail', '')}\n")
