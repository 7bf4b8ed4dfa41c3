"""`dedupd recover`: finish or roll back interrupted dedup operations."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store
from dedupd.dedup.journal import FAILED
from dedupd.dedup.recovery import recover_volumes
from dedupd.output import print_json, show_path

HELP = """\
Resolve every operation the journal shows as unfinished (after a crash, a
kill -9 or a power cut): an operation whose new name is already in place is
finished (a duplicate is only removed after its bytes are compared again);
any other is rolled back by removing the extra names it had made. Decisions
use the inode numbers recorded in the journal, so running it twice is safe.
`dedupd run` does the same for each volume before it starts. Volumes named in
the config are locked while they are recovered (exit 75 if a pass is running
on one: try again later).

exit status: 0 when everything was resolved, 1 when an operation was left
FAILED (see `dedupd journal --state FAILED`).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("recover", help="finish or roll back interrupted operations",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volume", metavar="NAME", help="only this volume's operations")
    add_common(p, dry_run=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(args, cfg)
    try:
        done = recover_volumes(store, cfg.volumes, only=args.volume, dry_run=args.dry_run)
    finally:
        store.close()
    if args.json:
        print_json({"dry_run": args.dry_run, "recovered": [r.as_json() for r in done]})
    else:
        for r in done:
            sys.stdout.write(f"#{r.op} {r.kind}: {r.before} -> {r.after}: {show_path(r.detail)}\n")
        sys.stdout.write(f"{len(done)} unfinished operations "
                         f"{'would be ' if args.dry_run else ''}resolved\n")
    return 1 if any(r.after == FAILED for r in done) else 0
