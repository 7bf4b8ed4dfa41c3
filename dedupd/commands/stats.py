"""`dedupd stats VOLUME`: what the index knows about a volume and what was done to it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store
from dedupd.commands.run import select_volumes
from dedupd.config import VolumeConfig
from dedupd.index import extents as ix
from dedupd.index.store import Store
from dedupd.output import human_bytes, print_json
from dedupd.volumes.btrfs import meta_key

HELP = """\
Show the index's view of a volume (by config name or path): files indexed,
files still pending (changed recently, waiting to settle), files hashed,
duplicate groups, bytes deduped so far (logical, and reclaimed as measured
with statvfs around each pass), the last full scan, the last BTRFS generation
(transid) seen, and the counters of the last pass (files_examined is how many
files the pass looked at: on BTRFS only those changed since the last pass).

Reads the index only; changes nothing.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("stats", help="index statistics of a volume", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("volume", metavar="VOLUME", help="volume name from the config, or its path")
    add_common(p)
    p.set_defaults(func=run, settle=None, min_size=None, apply=False)


def collect(store: Store, vol: VolumeConfig) -> dict[str, Any]:
    root = os.fsencode(os.path.realpath(vol.path))
    doc: dict[str, Any] = {"volume": vol.name, "kind": vol.kind, "path": str(vol.path)}
    doc.update(ix.volume_stats(store, root))
    pending = 0
    for files in ix.files_of_sizes(store, ix.pending_sizes(store, [root], vol.min_size),
                                   [root]):
        pending += sum(1 for f in files if f.head is None and f.full is None)
    doc["pending"] = pending
    reclaimed = store.get_meta(meta_key(vol, "bytes_reclaimed"))
    doc["bytes_reclaimed_measured"] = int(reclaimed) if reclaimed else 0
    last_full = store.get_meta(meta_key(vol, "last_full_scan"))
    doc["last_full_scan"] = float(last_full) if last_full else None
    gen = store.get_meta(meta_key(vol, "gen"))
    doc["last_generation"] = int(gen) if gen else None
    last = store.get_meta(meta_key(vol, "last_pass"))
    doc["last_pass"] = json.loads(last) if last else None
    return doc


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    vol = select_volumes(cfg, [args.volume], args)[0]
    store = open_store(args, cfg)
    try:
        doc = collect(store, vol)
    finally:
        store.close()
    if args.json:
        print_json(doc)
    else:
        print_text(doc)
    return 0


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def print_text(d: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(f"{d['volume']} ({d['kind']}, {d['path']})\n")
    out.write(f"  files indexed     {d['files_indexed']} ({d['paths_indexed']} paths)\n")
    out.write(f"  pending           {d['pending']}\n")
    out.write(f"  hashed            {d['hashed']}\n")
    out.write(f"  duplicate groups  {d['duplicate_groups']} "
              f"({human_bytes(d['duplicate_bytes'])} in extra copies)\n")
    out.write(f"  deduped           {d['files_deduped']} files, "
              f"{human_bytes(d['bytes_deduped'])}; measured reclaimed "
              f"{human_bytes(d['bytes_reclaimed_measured'])}\n")
    out.write(f"  last full scan    {_when(d['last_full_scan'])}\n")
    gen = d["last_generation"]
    out.write(f"  last generation   {gen if gen is not None else '-'}\n")
    lp = d["last_pass"]
    if lp:
        c = lp.get("counters", {})
        kind = f"full ({lp['full']})" if lp.get("full") else "incremental"
        out.write(f"  last pass         {_when(lp.get('at'))}, {kind}: "
                  f"{c.get('files_examined', 0)} files examined, "
                  f"{c.get('files_hashed', 0)} read, {c.get('hits', 0)} deduped\n")
