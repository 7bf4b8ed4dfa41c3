"""`dedupd pause|resume|rescan [VOLUME]`: steer the running daemon over its socket."""

from __future__ import annotations

import argparse
from typing import Any

from dedupd.commands.common import add_common
from dedupd.commands.status import add_socket_arg, socket_path
from dedupd.control import ControlClient
from dedupd.output import print_json

ACTIONS = {
    "pause": "stop working on VOLUME (default: all) after the current step; status still "
             "answers. Not remembered across a daemon restart.",
    "resume": "continue paused volumes where they stopped.",
    "rescan": "start a full rescan of VOLUME (default: all): right away when idle, "
              "otherwise as soon as the pass under way is done.",
}
EPILOG = "Needs root or the [daemon] admin_group; exit status 75 when the daemon is not running."


def register(sub: Any) -> None:
    for name, text in ACTIONS.items():
        p = sub.add_parser(name, help=text.split(";")[0].split(".")[0],
                           description=f"{name.capitalize()}: {text}", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("volume", nargs="?", metavar="VOLUME", help="one volume (default: all)")
        add_socket_arg(p)
        add_common(p)
        p.set_defaults(func=run, action=name)


def run(args: argparse.Namespace) -> int:
    client = ControlClient(socket_path(args))
    try:
        reply = client.request(args.action, **({"volume": args.volume} if args.volume else {}))
    finally:
        client.close()
    names = reply.get(args.action, [])
    if args.json:
        print_json({args.action: names})
    else:
        print(f"{args.action}: {', '.join(names) or 'no volumes'}")
    return 0
