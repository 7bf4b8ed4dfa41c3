"""`dedupd metrics`: the daemon's Prometheus metrics, printed once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store, path
from dedupd.commands.status import add_socket_arg, shown, socket_path
from dedupd.control import ControlClient
from dedupd.errors import DedupdError, TemporaryFailure, one_line
from dedupd.fsops.whole import replace_file
from dedupd.output import print_json

HELP = """\
Print the metrics that [daemon] metrics_address serves over HTTP, once, in
Prometheus text format: for node_exporter's textfile collector, e.g. from a
systemd timer or cron:

  dedupd metrics -o /var/lib/node_exporter/textfile_collector/dedupd.prom

Volume counters, passes and errors come from the running daemon (over its
control socket); backup age and size per job from the index. Without a
running daemon only the backup metrics are printed, with dedupd_up 0 (a
note on stderr; exit status 0, so the file is still written). Every metric
is described in docs/status.md (Metrics).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("metrics", help="print Prometheus metrics once (textfile collector)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", type=path, metavar="FILE",
                   help="write FILE (atomically: a temp file renamed over it) instead of stdout")
    add_socket_arg(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dedupd import metrics

    cfg = load_config(args)
    sock = socket_path(args)
    doc = _status(sock)
    store = open_store(args, cfg)
    try:
        facts = metrics.backup_facts(store, list(cfg.backups))
    finally:
        store.close()
    with shown(sock):
        fams = metrics.families(doc, facts)
    if args.json:
        print_json({f.name: {"type": f.type, "help": f.documentation,
                             "samples": [{"name": s.name, "labels": s.labels, "value": s.value}
                                         for s in f.samples]} for f in fams})
        return 0
    out = metrics.text(fams)
    if args.output is None:
        sys.stdout.write(out)
        return 0
    _write(args.output, out.encode())
    return 0


def _write(dest: Path, data: bytes) -> None:
    """dest replaced by data at once (fsops.whole); a directory that is missing or not
    writable is an error."""
    try:
        replace_file(dest, data)
    except OSError as e:
        raise DedupdError(f"cannot write {dest}: {e.strerror or e}") from None


def _status(sock: Path) -> dict[str, Any] | None:
    """The daemon's status document, or None (with a note) when no daemon answers."""
    client = ControlClient(sock)
    try:
        doc = client.request("status")
    except TemporaryFailure as e:
        sys.stderr.write(f"dedupd: {one_line(str(e))}; printing the index's metrics only "
                         "(dedupd_up 0)\n")
        return None
    finally:
        client.close()
    doc.pop("ok", None)
    return doc
