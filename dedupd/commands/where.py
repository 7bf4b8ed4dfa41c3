"""`dedupd where PATH`: where an archive file came from, or where a source file went."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store
from dedupd.index import provenance as prov
from dedupd.index.provenance import Provenance
from dedupd.output import print_json, show_path

HELP = """\
Answer from the provenance that `dedupd consolidate` records:

  for a file in an archive: every source path that held the same content,
  and when it was first and last seen there;
  for a file in a source share: the archive file that holds its content.

Nothing is read from the files themselves; run `dedupd consolidate NAME` to
refresh the records. Exit status 1 when the index knows nothing of PATH.

examples:
  dedupd where /mnt/archive/2019/07/IMG_0042.JPG
  dedupd where --json /mnt/backup-disk/DCIM/IMG_0042.JPG
"""


def register(sub: Any) -> None:
    p = sub.add_parser("where", help="show where an archive file came from (or went)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH", help="an archive file or a source file")
    add_common(p)
    p.set_defaults(func=run)


def _doc(p: Provenance) -> dict[str, Any]:
    return {"consolidation": p.consolidation, "source": os.fsdecode(p.source_path),
            "archive": os.fsdecode(p.archive_path), "size": p.size,
            "first_seen": p.first_seen, "last_seen": p.last_seen}


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    # Rows hold real paths (symlinks resolved); the file itself may be gone by now.
    path = os.path.realpath(os.fsencode(args.path))
    store = open_store(args, cfg)
    try:
        sources = prov.sources_of(store, path)
        archived = [] if sources else prov.archive_of(store, path)
    finally:
        store.close()
    role = "archive" if sources else "source" if archived else "unknown"
    if args.json:
        print_json({"path": os.fsdecode(path), "role": role,
                    "sources": [_doc(p) for p in sources],
                    "archive": [_doc(p) for p in archived]})
    else:
        _print_text(path, sources, archived)
    return 0 if role != "unknown" else 1


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _print_text(path: bytes, sources: list[Provenance], archived: list[Provenance]) -> None:
    out = sys.stdout
    if sources:
        out.write(f"{show_path(path)} (archive file) came from:\n")
        for p in sources:
            out.write(f"  {show_path(p.source_path)}  [{p.consolidation}, seen "
                      f"{_when(p.first_seen)} .. {_when(p.last_seen)}]\n")
    elif archived:
        for p in archived:
            out.write(f"{show_path(path)} is in the archive as {show_path(p.archive_path)} "
                      f"[{p.consolidation}, last seen {_when(p.last_seen)}]\n")
    else:
        sys.stderr.write(f"dedupd: {show_path(path)}: no provenance recorded "
                         "(not imported by `dedupd consolidate` yet?)\n")
