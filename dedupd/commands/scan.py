"""`dedupd scan`: index trees and report duplicate groups (changes no files)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from dedupd.commands.common import (
    add_common,
    add_progress_arg,
    existing_path,
    open_index,
    parse_size,
    seconds,
)

if TYPE_CHECKING:  # imported once the walk is under way (run)
    from dedupd.scan.scanner import ScanReport

HELP = """\
Walk the trees, update the index and report every set of identical files.

Only files whose size is shared by another file are read; a small head block is
hashed first and the whole file only when heads collide. A second scan reads
only files whose size, mtime or ctime changed. Hardlinks to one inode count as
one file. Symlinks are never followed, mount points are not crossed unless
--cross-mounts, and fifos, sockets and devices are skipped (counted).

Nothing is changed on disk: this is a report. Exit status is 0 even when some
files could not be read (they are listed under problems).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("scan", help="report duplicate files under PATHs",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=existing_path, metavar="PATH",
                   help="directory trees (or files)")
    p.add_argument("--min-size", type=parse_size, default=1, metavar="N",
                   help="ignore files smaller than N bytes (suffixes K, M, G; default 1: "
                   "empty files form no group)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="skip names or paths matching GLOB (repeatable)")
    p.add_argument("--cross-mounts", action="store_true", help="descend into mount points")
    p.add_argument("--settle", type=seconds, default=0.0, metavar="SECONDS",
                   help="skip files changed less than SECONDS ago (default 0)")
    add_progress_arg(p)
    add_common(p)
    p.set_defaults(func=run, early=start_walk, log_later=True)


def start_walk(args: argparse.Namespace) -> None:
    """The walk first (cli.main calls this before it sets up logging): its processes
    are forked before logging, the index, SQLite and the scanner are imported (a
    rescan's walk is most of its time; docs/schema.md), and get the index's known
    digests from the scan once it has read them. args.walking: that walk."""
    from dedupd import forkpipe

    # the collector as in the walk's processes, for the rest of this one too: what is
    # imported is never garbage, and without it each of the next imports' thousands
    # of objects, then each of the report's, is traversed again (a few ms a rescan)
    forkpipe.quiet_gc()
    from dedupd.commands import scan_first
    from dedupd.scan.walk import WalkOptions, normalize_roots

    roots = normalize_roots(args.paths)
    opts = WalkOptions(args.min_size, tuple(args.exclude), args.cross_mounts)
    # the walk cli.run forked before parsing, if it is this one (scan_first.py)
    if (walking := scan_first.take(roots, opts)) is not None:
        args.walking = walking
        return
    try:
        args.walking = scan_first.fork(roots, opts)
    except OSError as e:  # no descriptors or processes left (EMFILE, EAGAIN): not a bug
        from dedupd.errors import DedupdError

        raise DedupdError(f"cannot start the walk: {e.strerror or e}") from None


def run(args: argparse.Namespace) -> int:
    from dedupd.errors import DedupdError
    from dedupd.forkpipe import ChildFailed
    from dedupd.scan.walkproc import ForkedWalk

    walking: ForkedWalk = args.walking
    try:  # however it ends, no walk process outlives the scan
        from dedupd.output import json_compact
        from dedupd.progress import open_progress
        from dedupd.scan.scanner import ScanOptions, scan

        store = open_index(args)
        opts = ScanOptions(min_size=args.min_size, exclude=tuple(args.exclude),
                           cross_mounts=args.cross_mounts, settle_seconds=args.settle)
        try:
            with open_progress(args.progress) as prog:
                report = scan(store, args.paths, opts, progress=prog, walking=walking,
                              json_groups=args.json and json_compact())
        except ChildFailed as e:  # a walk or hashing process died (killed): no answer
            raise DedupdError(f"the scan failed: {e}") from None
        finally:
            store.close()
    finally:
        walking.close()
    from dedupd.output import print_json

    if args.json and report.groups_json is not None:
        sys.stdout.write(_json_text(report))
    elif args.json:
        print_json(report.as_json())
    else:
        _print_text(report)
    return 0


def _json_text(r: ScanReport) -> str:
    """print_json's compact text of r.as_json(), around the groups' JSON that the
    scan made beside its walk (the same text: output.json_text)."""
    from dedupd.output import json_text

    head, _, tail = json_text(r.as_json(groups=False)).partition('"groups": null')
    return f'{head}"groups": {r.groups_json}{tail}\n'


def _print_text(r: ScanReport) -> None:
    from dedupd.output import human_bytes, show_path

    out = sys.stdout
    for g in r.groups:
        out.write(f"# {len(g.files)} files of {human_bytes(g.size)} "
                  f"({human_bytes(g.wasted)} duplicate)\n")
        for f in g.files:
            out.write(show_path(f.path) + "\n")
            for extra in f.paths[1:]:
                out.write(f"  = {show_path(extra)} (hardlink)\n")
        out.write("\n")
    for p in r.problems:
        sys.stderr.write(f"dedupd: {p.reason}: {show_path(p.path)}"
                         f"{': ' + show_path(p.detail) if p.detail else ''}\n")
    st = r.stats
    out.write(f"{st['groups']} groups, {st['duplicate_files']} duplicate files, "
              f"{human_bytes(float(st['duplicate_bytes']))} duplicate; "
              f"{st['files_seen']} files seen, {st['files_hashed']} read "
              f"({human_bytes(float(st['bytes_read']))}) in {st['seconds']}s")
    if st["files_pending"]:
        out.write(f"; {st['files_pending']} not settled yet")
    out.write("\n")
