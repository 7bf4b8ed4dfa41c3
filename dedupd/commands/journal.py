"""`dedupd journal`: the destructive operations dedupd made, with their states."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store
from dedupd.dedup.journal import FINAL, STATES, Journal
from dedupd.output import human_bytes, print_json, show_path

HELP = """\
List the operations the hardlink and cross-drive linkers journalled: every
name replaced by a hardlink or moved to another branch, with its state and
time. States: PENDING, LINKED, REMOVING (unfinished:
`dedupd recover` resolves them), DONE, REFUSED, ROLLED_BACK, FAILED (final).
See docs/safety.md. Changes nothing.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("journal", help="list journalled dedup operations",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volume", metavar="NAME", help="only this volume's operations")
    p.add_argument("--state", action="append", default=[], choices=STATES,
                   help="only operations in this state (repeatable)")
    p.add_argument("--unfinished", action="store_true",
                   help="only operations recovery still has to resolve")
    p.add_argument("--limit", type=int, default=100, metavar="N",
                   help="the newest N operations (default 100)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(args, cfg)
    jr = Journal(store)
    try:
        if args.unfinished:
            recs = jr.unfinished(args.volume)
        else:
            recs = jr.history(args.volume, args.limit, tuple(args.state))
    finally:
        jr.close()
        store.close()
    if args.json:
        print_json({"operations": [r.as_json() for r in recs]})
        return 0
    out = sys.stdout
    for r in recs:
        sp = r.spec
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.updated))
        mark = "" if r.state in FINAL else " (unfinished)"
        out.write(f"#{r.id} {when} {sp.volume} {sp.kind} {r.state}{mark} "
                  f"{human_bytes(sp.size)}\n  keep    {show_path(sp.keep_path)}\n"
                  f"  replace {show_path(sp.dup_path)}\n")
        if sp.dest_path:
            out.write(f"  link    {show_path(sp.dest_path)}\n")
        if r.reason:
            out.write(f"  reason  {show_path(r.reason)}\n")
    out.write(f"{len(recs)} operations\n")
    return 0
