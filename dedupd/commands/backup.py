"""`dedupd backup JOB` and `dedupd backups JOB`: run a backup, list restore points."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from dedupd.commands.common import add_common, add_progress_arg, load_config, open_store
from dedupd.output import human_bytes, print_json
from dedupd.progress import open_progress

if TYPE_CHECKING:
    from dedupd.backup.jobs import BackupResult
    from dedupd.backup.start import Ahead, Started
    from dedupd.config import Config

# The backup code (jobs.py and the index under it) is imported by each command
# once it runs: `dedupd backup` first starts the processes its run waits on
# (backup/start.py), then imports it while they run.

BACKUP_HELP = """\
Back up a ZFS dataset to the job's target (S3 bucket or rclone remote).

Takes a snapshot named <snapshot_prefix><UTC time> (tagged with the user property
dedupd:job), sends it - incrementally from the newest snapshot that was uploaded
and confirmed, unless --full or full_every says otherwise - through the
compressor, cuts the stream into chunk_size pieces and uploads each as one
plain object. The manifest is written last: a backup without one does not
exist. A run that was killed is resumed by the next run (chunks already on the
target are not uploaded again). Then local snapshots and remote restore points
beyond the retention settings are pruned (whole chains only).

exit status: 0 ok, 1 failure, 75 target unreachable or job already running
(retry later), 78 config error.
"""

BACKUPS_HELP = """\
List the job's restore points as the target holds them (manifests), oldest
first, with their chain (the full and incrementals a restore replays), sizes,
dates and the last local verification.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("backup", help="back up a ZFS dataset (snapshot, send, upload)",
                       description=BACKUP_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB", help="a [backups.JOB] table of the config")
    p.add_argument("--full", action="store_true",
                   help="send a full stream, not an incremental (an unfinished incremental "
                   "attempt is given up rather than resumed)")
    add_progress_arg(p)
    add_common(p, dry_run=True)
    p.set_defaults(func=run_backup)

    q = sub.add_parser("backups", help="list a backup job's restore points",
                       description=BACKUPS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("job", metavar="JOB")
    add_common(q)
    q.set_defaults(func=run_backups)


def run_backup(args: argparse.Namespace) -> int:
    from dedupd.backup import start

    cfg = load_config(args)
    # The target (an rclone one asks its remote's features) and the zfs probes
    # first: they run in other processes while the rest is imported and the
    # index opened.
    early = start.start(cfg, args.job)
    if args.dry_run:
        r = _run(args, cfg, early, None)
    else:
        # the job lock, and under it the new snapshot, also before the imports
        with start.locked_ahead(cfg, early.job) as ahead:
            r = _run(args, cfg, early, ahead)
    if args.json:
        print_json(r.as_json())
        return 0
    kind = "full" if r.full else f"incremental from {r.base_snapshot}"
    if r.dry_run:
        verb = "would resume" if r.resumed else "would back up"
        print(f"{r.job}: {verb} {r.snapshot} ({kind}); nothing changed (dry run)")
        return 0
    print(f"{r.job}: backed up {r.snapshot} ({kind}) as {r.id}: {r.chunks} chunks, "
          f"{human_bytes(r.total_size)} stored, {r.uploaded} uploaded"
          f"{f', {r.skipped} already there (resumed)' if r.skipped else ''} "
          f"in {r.seconds:.1f}s")
    for n in r.pruned_local:
        print(f"  pruned local snapshot {n}")
    for n in r.pruned_remote:
        print(f"  pruned remote restore point {n}")
    return 0


def _run(args: argparse.Namespace, cfg: Config, early: Started, ahead: Ahead | None
         ) -> BackupResult:
    from dedupd.backup import jobs

    store = open_store(args, cfg)
    try:
        with open_progress(args.progress, unit="chunks") as prog:
            if prog:
                prog.phase("upload")
            return jobs.run_job(cfg, early.job, store, dry_run=args.dry_run, full=args.full,
                                target=early.target, probe=early.probe, ahead=ahead,
                                hooks=jobs.Hooks(progress=prog.advance if prog else None))
    finally:
        store.close()


def run_backups(args: argparse.Namespace) -> int:
    from dedupd.backup import catalog
    from dedupd.backup.start import resolve
    from dedupd.backup.targets import make_target
    from dedupd.index import backups as rows

    cfg = load_config(args)
    jc = resolve(cfg, args.job)
    store = open_store(args, cfg)
    try:
        ms = catalog.load(make_target(jc.target), jc.name)
        local = {r.id: r for r in rows.for_job(store, jc.name)}
    finally:
        store.close()
    points: list[dict[str, Any]] = []
    for pt in catalog.points(ms):
        m = pt.manifest
        row = local.get(m.id)
        points.append({
            "id": m.id, "snapshot": m.snapshot, "guid": str(m.snapshot_guid),
            "full": m.full, "base_snapshot": m.base_snapshot,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(m.created)),
            "chunks": len(m.chunks), "size": m.total_size,
            "chain": list(pt.chain_ids), "chain_size": sum(
                x.total_size for x in ms if x.id in pt.chain_ids),
            "broken": pt.broken, "storage_class": m.storage_class,
            "verified": row.verify_level if row and row.verified_at else None})
    if args.json:
        print_json({"job": jc.name, "restore_points": points})
        return 0
    if not points:
        print(f"{jc.name}: no restore points yet")
    for p in points:
        kind = "full" if p["full"] else f"incr (+{len(p['chain']) - 1})"
        state = "BROKEN: " + str(p["broken"]) if p["broken"] else (
            f"verified ({p['verified']})" if p["verified"] else "uploaded, confirmed")
        sys.stdout.write(f"{p['created']}  {p['id']}  {p['snapshot']}  {kind}  "
                         f"{human_bytes(float(p['size']))} (chain "
                         f"{human_bytes(float(p['chain_size']))})  {state}\n")
    return 0
