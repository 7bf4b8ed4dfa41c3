"""`dedupd status`: ask the running daemon what it is doing (its control socket)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dedupd import config
from dedupd.commands.common import add_common, load_config, path, seconds
from dedupd.errors import ConfigError, DedupdError, one_line
from dedupd.output import human_bytes, json_text, print_json, show_path

HELP = """\
Show what the running daemon is doing: each volume's state (idle, scanning,
hashing, deduping; paused), what it is working on, rates, passes, bytes
reclaimed, backup jobs, the next scheduled events and the last errors. On a
terminal as tables; piped or redirected as plain columns (the same each
release, for scripts); --json for the whole status document.

It asks the daemon over its control socket (RUNTIME_DIR/dedupd.sock, see
[daemon] runtime_dir); root and members of the socket group may ask. The
protocol is plain newline-delimited JSON (docs/status.md), so this works too:
  echo '{"cmd":"status"}' | socat - UNIX-CONNECT:/run/dedupd/dedupd.sock

exit status: 0 ok, 1 refused (permission, unknown volume), 75 daemon not running,
busy, or stopped (--watch ends with it, saying so, when the daemon stops)
"""


def register(sub: Any) -> None:
    p = sub.add_parser("status", help="what the running daemon is doing",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("volume", nargs="?", metavar="VOLUME", help="only this volume")
    p.add_argument("--watch", nargs="?", type=seconds, const=2.0, default=None, metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until interrupted")
    add_socket_arg(p)
    add_common(p)
    p.set_defaults(func=run)


def add_socket_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", type=path, metavar="PATH",
                   help="daemon socket (default RUNTIME_DIR/dedupd.sock from the config)")


def socket_path(args: argparse.Namespace) -> Path:
    """--socket, else RUNTIME_DIR/dedupd.sock from the config.

    A config that no longer validates (edited, then reloaded: the daemon logs
    the error and keeps running with the previous one) must not hide the
    daemon: its runtime_dir is then read from the raw TOML (or the default is
    used) with a warning naming the config error."""
    if args.socket is not None:
        return Path(args.socket)
    try:
        return load_config(args).daemon.runtime_dir / "dedupd.sock"
    except ConfigError as e:
        d = _raw_runtime_dir(args.config or config.DEFAULT_CONFIG)
        sys.stderr.write(f"dedupd: warning: {one_line(str(e))}\n(asking the daemon at "
                         f"{d}/dedupd.sock anyway; the running daemon keeps its last good "
                         "config)\n")
        return d / "dedupd.sock"


def _raw_runtime_dir(path: Path) -> Path:
    """[daemon] runtime_dir as written in path, when it is there and absolute."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f).get("daemon", {}).get("runtime_dir")
    except (OSError, ValueError, AttributeError):
        raw = None
    if isinstance(raw, str) and os.path.isabs(raw):
        return Path(raw)
    return config.DaemonConfig.runtime_dir


def run(args: argparse.Namespace) -> int:
    from dedupd.control import ControlClient  # asyncio: not for `status --help`

    client = ControlClient(socket_path(args))
    fields = {"volume": args.volume} if args.volume else {}
    console = None
    if not args.json and sys.stdout.isatty():  # tables on a terminal; scripts get render()
        from rich.console import Console

        console = Console(highlight=False)
    try:
        while True:
            doc = client.request("status", **fields)
            doc.pop("ok", None)
            if args.json:
                if args.watch:
                    sys.stdout.write(json_text(doc) + "\n")
                else:
                    print_json(doc)
            else:
                if args.watch and sys.stdout.isatty():
                    sys.stdout.write("\x1b[H\x1b[2J")
                with shown(client.path):
                    if console is not None:
                        from dedupd.commands.status_table import show

                        show(doc, console)
                    else:
                        sys.stdout.write(render(doc))
            sys.stdout.flush()
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()


@contextlib.contextmanager
def shown(path: str | os.PathLike[str]) -> Iterator[None]:
    """Around what reads a status document's fields: a reply that lacks them or has
    them of other types (another release's daemon, or not dedupd at all listening at
    path) is a DedupdError naming path, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        raise DedupdError(f"{os.fspath(path)}: the reply is not a status document this dedupd can "
                          f"read ({type(e).__name__}: {e}; another version of the daemon? "
                          "--json prints it as it came)") from None


def ago(seconds: float) -> str:
    """A duration, short: 45s, 12m, 3h05m (both views of the status)."""
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def when(t: float | None) -> str:
    """An epoch time, local: the time of day within a day of now, else the date too;
    "-" for None."""
    if t is None:
        return "-"
    fmt = "%H:%M:%S" if abs(t - time.time()) < 86400 else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.localtime(t))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
                   for r in rows)


def render(doc: dict[str, Any]) -> str:
    """The human view of a status document."""
    out = [f"dedupd {doc['version']}, pid {doc['pid']}, {doc['state']}, up "
           f"{ago(doc['uptime'])}, {human_bytes(doc['bytes_reclaimed'])} reclaimed\n"]
    rows = [["VOLUME", "KIND", "MODE", "STATE", "FILES/S", "READ/S", "PASSES", "RECLAIMED",
             "DOING"]]
    for v in doc["volumes"].values():
        state = "paused" if v["paused"] else v["state"]
        if v["queue"]["rescan_requested"]:
            state += "+rescan"
        rows.append([v["name"], v["kind"], v["mode"], state,
                     f"{v['rates']['files_per_s']:.0f}",
                     human_bytes(v["rates"]["bytes_per_s"]) + "/s",
                     f"{v['passes']['completed']}/{v['passes']['started']}",
                     human_bytes(v["bytes_reclaimed"]), show_path(v["doing"])])
    out.append(_table(rows) if len(rows) > 1 else "no volumes\n")
    if doc["backups"]:
        jrows = [["BACKUP", "SCHEDULE", "STATE", "NEXT RUN", "LAST RESULT"]]
        jrows += [[j["name"], j["schedule"], j["state"], when(j["next_run_at"]),
                   show_path(j["last_result"] or "-")] for j in doc["backups"].values()]
        out.append(_table(jrows))
    for e in doc["next_events"][:5]:
        out.append(f"next: {when(e['at'])} {show_path(e['what'])}\n")
    if doc["last_errors"]:
        out.append("last errors:\n")
        for e in doc["last_errors"][-10:]:
            path = f" {show_path(e['path'])}" if e.get("path") else ""
            out.append(f"  {when(e['time'])} {e['where']}:{path} {show_path(str(e['error']))}\n")
    return "".join(out)
