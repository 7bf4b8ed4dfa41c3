"""`dedupd groups`: duplicate groups from the index, without walking (all hosts too)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store, parse_size
from dedupd.index.inventory import ContentGroup, Copy, groups
from dedupd.output import human_bytes, print_json, show_path

HELP = """\
Report the duplicate groups the index holds, as the last scans and passes left
them: nothing is walked or read. Files are grouped by size and whole-file hash;
a file with several names is one copy (its other names are shown as hardlinks).

With a shared (PostgreSQL) inventory, --all-hosts groups the files of every host
that uses it and names each copy HOST:PATH, e.g. a photo kept on nas1 and on
backup-box. A host's name is its [database] host (default: its machine id).

examples:
  dedupd groups
  dedupd groups --all-hosts --min-size 1M
  dedupd groups --all-hosts --json
"""


def register(sub: Any) -> None:
    p = sub.add_parser("groups", help="duplicate groups from the index (no walk), all hosts too",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all-hosts", action="store_true",
                   help="group the files of every host sharing the index, not only this one")
    p.add_argument("--min-size", type=parse_size, default=1, metavar="SIZE",
                   help="ignore smaller files (default 1 byte)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(args, cfg)
    try:
        found = groups(store, all_hosts=args.all_hosts, min_size=args.min_size)
        host = store.host_identity.name
    finally:
        store.close()
    if args.json:
        print_json({"host": host, "all_hosts": args.all_hosts,
                    "groups": [_group_json(g) for g in found], "stats": _stats(found)})
    else:
        _print_text(found, args.all_hosts)
    return 0


def _stats(found: list[ContentGroup]) -> dict[str, int]:
    return {"groups": len(found), "duplicate_files": sum(len(g.copies) - 1 for g in found),
            "duplicate_bytes": sum(g.wasted for g in found)}


def _group_json(g: ContentGroup) -> dict[str, Any]:
    return {"size": g.size, "hash": g.full.hex(), "hosts": list(g.hosts),
            "files": [_copy_json(c) for c in g.copies]}


def _copy_json(c: Copy) -> dict[str, Any]:
    doc: dict[str, Any] = {"host": c.host, "path": os.fsdecode(c.path)}
    if len(c.paths) > 1:
        doc["hardlinks"] = [os.fsdecode(p) for p in c.paths[1:]]
    return doc


def _print_text(found: list[ContentGroup], all_hosts: bool) -> None:
    out = sys.stdout

    def name(c: Copy, path: bytes) -> str:
        return f"{c.host}:{show_path(path)}" if all_hosts else show_path(path)

    for g in found:
        where = f" on {', '.join(g.hosts)}" if all_hosts else ""
        out.write(f"# {len(g.copies)} files of {human_bytes(g.size)}{where}\n")
        for c in g.copies:
            out.write(name(c, c.path) + "\n")
            for extra in c.paths[1:]:
                out.write(f"  = {name(c, extra)} (hardlink)\n")
        out.write("\n")
    st = _stats(found)
    scope = "all hosts" if all_hosts else "this host"
    out.write(f"{st['groups']} groups, {st['duplicate_files']} duplicate files, "
              f"{human_bytes(float(st['duplicate_bytes']))} in duplicates ({scope}; "
              "from the index, nothing read)\n")
