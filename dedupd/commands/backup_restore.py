"""`dedupd verify JOB` and `dedupd restore JOB --target POOL/DATASET`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dedupd.backup import restore, snapshots, verify
from dedupd.backup.start import resolve
from dedupd.backup.targets import make_target
from dedupd.commands.common import (
    add_common,
    add_progress_arg,
    load_config,
    open_store,
    seconds,
)
from dedupd.config import BackupConfig
from dedupd.errors import EXIT_FAILURE, UsageError
from dedupd.index import backups as rows
from dedupd.output import human_bytes, print_json
from dedupd.progress import open_progress

VERIFY_HELP = """\
Check that the job's restore points on the target are intact.

  --level metadata  HEAD every object: present, size and checksum as in the
                    manifest. Downloads nothing (fine on Glacier/Deep Archive).
  --level sample    also download --sample PCT percent of the chunks and
                    compare their SHA-256 with the manifest.
  --level full      download and check every chunk; with --scratch POOL/DS,
                    also test-restore the newest point (or --at) into that new
                    dataset (the whole chain through zfs receive), then destroy
                    the scratch dataset again.

exit status: 0 all intact, 1 a problem was found (listed), 75 target unreachable.
"""

RESTORE_HELP = """\
Restore a restore point (default: the newest) into POOL/DATASET.

Plans the chain (the full and every incremental up to --at, linked by snapshot
GUIDs), asks a cold store (GLACIER, DEEP_ARCHIVE) to thaw every chunk of it at
once and waits, showing what it waits for (re-running resumes the wait), then
downloads every chunk and checks its SHA-256 before anything is received, and
replays each stream through the decompressor into `zfs receive`.

The target dataset should not exist. If it already holds the start of the
chain (an interrupted restore, or an older restore point), only the missing
incrementals are received and changes made since its newest snapshot are
rolled back; any other existing target is destroyed - after the whole chain
has been verified - and received anew. You are asked to confirm unless --yes (without a terminal,
--yes is required); --dry-run shows the plan only.

exit status: 0 restored, 1 failure (a corrupt chunk, a broken chain), 75 objects
still thawing or target unreachable (run again later).
"""


def register(sub: Any) -> None:
    v = sub.add_parser("verify", help="check a backup job's restore points on the target",
                       description=VERIFY_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("job", metavar="JOB")
    v.add_argument("--level", choices=verify.LEVELS, default="metadata")
    v.add_argument("--sample", type=float, default=10.0, metavar="PCT",
                   help="percentage of chunks downloaded at --level sample (default 10)")
    v.add_argument("--at", metavar="POINT", help="only this restore point and its chain")
    v.add_argument("--scratch", metavar="POOL/DATASET",
                   help="--level full: test-restore into this dataset (must not exist; "
                   "destroyed afterwards)")
    add_common(v)
    v.set_defaults(func=run_verify)

    r = sub.add_parser("restore", help="restore a backup into a ZFS dataset",
                       description=RESTORE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("job", metavar="JOB")
    r.add_argument("--at", metavar="SNAPSHOT",
                   help="restore point: snapshot name, backup id or GUID (default newest)")
    r.add_argument("--target", required=True, metavar="POOL/DATASET",
                   help="dataset to receive into")
    r.add_argument("--yes", action="store_true", help="do not ask before overwriting")
    r.add_argument("--no-wait", action="store_true",
                   help="request the thaw of cold objects and exit 75 instead of waiting")
    r.add_argument("--poll", type=seconds, default=60.0, metavar="SECONDS",
                   help="how often to check thawing objects (default 60)")
    r.add_argument("--max-wait", type=seconds, default=48 * 3600.0, metavar="SECONDS",
                   help="give up waiting for the thaw after this long (exit 75; default 48h)")
    r.add_argument("--thaw-days", type=int, default=3, metavar="DAYS",
                   help="keep thawed copies readable this many days (default 3)")
    r.add_argument("--single-pass", action="store_true",
                   help="skip the verify-everything-first pass (each chunk is still checked "
                   "before it is received; a bad one aborts the receive midway)")
    add_progress_arg(r)
    add_common(r, dry_run=True)
    r.set_defaults(func=run_restore)


def run_verify(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    jc = resolve(cfg, args.job)
    results = verify.verify(make_target(jc.target), jc.name, args.level,
                            sample_pct=args.sample, at=args.at, spool_dir=jc.spool_dir)
    store = open_store(args, cfg)
    try:
        for res in results:
            if rows.get(store, res.id) is not None:
                rows.mark_verified(store, res.id, args.level, res.ok)
    finally:
        store.close()
    bad = [x for x in results if not x.ok]
    scratch = None
    if args.scratch and not bad:
        if args.level != "full":
            raise UsageError("--scratch needs --level full")
        scratch = _test_restore(jc, args.at, args.scratch)
    if args.json:
        print_json({"job": jc.name, "level": args.level, "ok": not bad,
                    "test_restore": scratch,
                    "restore_points": [x.as_json() for x in results]})
    else:
        for x in results:
            state = "ok" if x.ok else "PROBLEM"
            print(f"{x.id}  {x.snapshot}  {state}  ({x.objects} objects checked, "
                  f"{x.downloaded} chunks downloaded)")
            for p in x.problems:
                print(f"  {p}")
        print(f"{jc.name}: {len(results)} restore points, {len(bad)} with problems "
              f"(level {args.level})")
        if scratch:
            print(f"test restore of {scratch} into {args.scratch}: ok (scratch destroyed)")
    return EXIT_FAILURE if bad else 0


def _test_restore(jc: BackupConfig, at: str | None, scratch: str) -> str:
    """Receive the chain into a scratch dataset that we create, then destroy it."""
    if snapshots.dataset_exists(scratch):
        raise UsageError(f"--scratch {scratch} exists; name a dataset that does not")
    target = make_target(jc.target)
    p = restore.plan(target, jc.name, at, scratch)
    try:
        restore.run(target, p, verify_first=False, force=False, spool_dir=jc.spool_dir,
                    report=_say)
    finally:
        if snapshots.dataset_exists(scratch):
            snapshots.destroy_scratch(scratch)
    return p.point.snapshot


def _say(msg: str) -> None:
    sys.stderr.write(f"dedupd: {msg}\n")
    sys.stderr.flush()


def run_restore(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    jc = resolve(cfg, args.job)
    target = make_target(jc.target)
    p = restore.plan(target, jc.name, args.at, args.target)
    exists = snapshots.dataset_exists(args.target)
    if args.dry_run:
        if args.json:
            print_json({**p.as_json(), "dry_run": True, "target_exists": exists})
        else:
            _print_plan(p, exists)
        return 0
    if not args.yes:
        _print_plan(p, exists)
        what = f"overwrite {args.target}" if exists else f"create {args.target}"
        if not sys.stdin.isatty():
            raise UsageError(f"restore would {what}; pass --yes to confirm")
        answer = input(f"Restore: {what}? Type yes: ")
        if answer.strip().lower() != "yes":
            _say("restore cancelled")
            return EXIT_FAILURE
    restore.thaw(target, p, wait=not args.no_wait, poll_seconds=args.poll,
                 max_wait=args.max_wait, days=args.thaw_days, report=_say)
    with open_progress(args.progress, unit="chunks") as prog:
        restore.run(target, p, verify_first=not args.single_pass, force=exists,
                    spool_dir=jc.spool_dir, report=_say, progress=prog)
    if args.json:
        print_json({**p.as_json(), "restored": True})
    else:
        print(f"restored {p.point.snapshot} into {args.target} "
              f"({len(p.chain)} streams, {human_bytes(p.total_size)})")
    return 0


def _print_plan(p: restore.RestorePlan, exists: bool) -> None:
    print(f"restore {p.point.snapshot} ({p.point.id}) into {p.target_dataset}"
          f"{' (EXISTS: will be overwritten)' if exists else ''}:")
    for m in p.chain:
        print(f"  {'full' if m.full else 'incr'}  {m.snapshot}  {len(m.chunks)} chunks  "
              f"{human_bytes(m.total_size)}")
