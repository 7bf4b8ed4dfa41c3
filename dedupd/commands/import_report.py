"""`dedupd import REPORT.json`: verify another tool's duplicate report."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store, path
from dedupd.config import Config
from dedupd.errors import UsageError
from dedupd.interop.reports import FORMATS, ReportError, load
from dedupd.interop.verify import Verification, verify_report
from dedupd.output import human_bytes, print_json, show_path

HELP = """\
Read a duplicate report made by jdupes (-j), rmlint (-o json) or czkawka (JSON
save of `dup`) and check it: nothing in it is trusted. Every file is re-statted
(a size or mtime other than the report's means it changed: skipped) and hashed
in full; only files whose content really matches the rest of their group are
kept. Missing, changed, hardlinked-twice and differing files are listed with
the reason. The verified files go into the index with their hashes, so the
next `dedupd run` or `dedupd consolidate` need not read them again.

No file is changed. With --volume or --consolidation, files outside that
volume's path (or those sources and archive) are skipped as "outside".
Exit status 0 when the report could be read, even if files were skipped.

examples:
  jdupes -r -j /srv/photos > dups.json && dedupd import dups.json --base /
  rmlint -o json:rm.json /srv && dedupd import rm.json --volume photos --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="verify a jdupes/rmlint/czkawka duplicate report",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=path, metavar="REPORT.json")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="report format (default: detected from its shape)")
    p.add_argument("--base", type=path, default=None, metavar="DIR",
                   help="directory relative paths of the report start from (jdupes writes "
                   "paths as given on its command line; default: current directory)")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--volume", metavar="NAME", help="only files of [volumes.NAME]")
    scope.add_argument("--consolidation", metavar="NAME",
                       help="only files of [consolidate.NAME] (its sources and archive)")
    add_common(p, dry_run=True)
    p.set_defaults(func=run)


def _scope(cfg: Config, args: argparse.Namespace) -> list[bytes]:
    if args.volume:
        if args.volume not in cfg.volumes:
            raise UsageError(f"no [volumes.{args.volume}] in {cfg.source}")
        return [os.path.realpath(os.fsencode(cfg.volumes[args.volume].path))]
    if args.consolidation:
        c = cfg.consolidate.get(args.consolidation)
        if c is None:
            raise UsageError(f"no [consolidate.{args.consolidation}] in {cfg.source}")
        return [os.path.realpath(os.fsencode(p)) for p in (*c.sources, c.archive)]
    return []


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    scope = _scope(cfg, args)
    try:
        data = args.report.read_bytes()
    except OSError as e:
        raise UsageError(f"{args.report}: {e.strerror}") from None
    base = os.fsencode(os.path.abspath(args.base or os.getcwd()))
    try:
        fmt, groups = load(data, args.format, base)
    except ReportError as e:
        raise UsageError(f"{args.report}: {e}") from None
    store = open_store(args, cfg)
    try:
        v = verify_report(store, groups, scope, dry_run=args.dry_run)
    finally:
        store.close()
    doc = _doc(fmt, groups_in=len(groups), claims=sum(len(g.claims) for g in groups), v=v)
    if args.json:
        print_json(doc)
    else:
        _print_text(doc, v)
    return 0


def _doc(fmt: str, groups_in: int, claims: int, v: Verification) -> dict[str, Any]:
    return {
        "format": fmt,
        "groups": [{"size": g.size, "hash": g.full.hex(),
                    "paths": [os.fsdecode(p) for p in g.paths]} for g in v.groups],
        "skipped": [p.as_dict() for p in v.skipped],
        "stats": {"groups_in_report": groups_in, "files_in_report": claims,
                  "groups_verified": len(v.groups),
                  "files_verified": sum(len(g.paths) for g in v.groups),
                  "files_skipped": len(v.skipped), "bytes_read": v.hashing.bytes_read},
    }


def _print_text(doc: dict[str, Any], v: Verification) -> None:
    out = sys.stdout
    for g in v.groups:
        out.write(f"# {len(g.paths)} files of {human_bytes(g.size)} (verified)\n")
        for p in g.paths:
            out.write(show_path(p) + "\n")
        out.write("\n")
    for sk in v.skipped:
        out.write(f"skipped ({sk.reason}): {show_path(sk.path)}: {show_path(sk.detail)}\n")
    st = doc["stats"]
    out.write(f"{doc['format']} report: {st['groups_in_report']} groups, "
              f"{st['files_in_report']} files; {st['groups_verified']} groups "
              f"({st['files_verified']} files) verified, {st['files_skipped']} skipped\n")
