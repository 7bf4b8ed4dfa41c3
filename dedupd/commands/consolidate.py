"""`dedupd consolidate NAME`: import new content from backup shares into the archive."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dedupd.commands.common import add_common, add_progress_arg, load_config, open_store
from dedupd.errors import ConfigError, UsageError
from dedupd.output import human_bytes, print_json, show_path
from dedupd.progress import Progress, open_progress

if TYPE_CHECKING:  # imported by run(), after the index walk is forked (walkfirst)
    from dedupd.consolidate.run import Left, Report

HELP = """\
Import every distinct file of the [consolidate.NAME] sources that the archive
does not hold yet, at the path its layout gives (by EXIF capture date for
photos, else mtime), and record where each archive file came from
(`dedupd where PATH` shows it).

Stage 1 finds the distinct contents across all sources (a photo present in
three shares is imported once); stage 2 skips content the archive already has,
whatever its name or folder there. Copies are written under no name (a temp
name where the filesystem has no O_TMPFILE), fsynced, compared byte for byte
with the source and only then linked into place: an interrupted run leaves no
partial file and the next run resumes.

Sources are never modified. A re-run reads only files that changed since the
last one. --dry-run indexes and plans (reading EXIF dates) but copies nothing.

Exit status: 0 done, 1 some planned copies did not happen (listed; re-run),
75 another import into the same archive is running, 78 config error.

examples:
  dedupd consolidate photos --dry-run
  dedupd consolidate photos --json > import.json
"""


# The last run's heap, never freed: the process exits after the output (cli.run)
_LEFT: list[Left] = []


def register(sub: Any) -> None:
    p = sub.add_parser("consolidate", help="import new content from backup shares into an archive",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="a [consolidate.NAME] table of the config")
    add_progress_arg(p)
    add_common(p, dry_run=True)
    p.set_defaults(func=run)


def copy_reporter(prog: Progress) -> Callable[[int, int, int, int], None]:
    """The copy stage's (files, files_total, bytes, bytes_total) callback, on prog."""
    def report(files: int, files_total: int, nbytes: int, bytes_total: int) -> None:
        prog.phase("copy", files_total, bytes_total)
        prog.update(files, nbytes)
    return report


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.name not in cfg.consolidate:
        known = ", ".join(cfg.consolidate) or "none configured"
        raise UsageError(f"no [consolidate.{args.name}] in {cfg.source} (known: {known})")
    from dedupd.consolidate import walkfirst

    walkfirst.start(cfg.consolidate[args.name])  # the index walk, beside what follows
    _LEFT.clear()  # run in-process more than once (tests): one run's at a time
    try:
        from dedupd.consolidate.run import Left, Options, consolidate

        _LEFT.append(left := Left())
        store = open_store(args, cfg)
        try:
            with open_progress(args.progress) as prog:
                report = consolidate(store, cfg.consolidate[args.name],
                                     Options(args.dry_run, prog, copy_reporter(prog)),
                                     left=left)
        except ConfigError as e:  # checks made at run time name the config file too
            if e.file != "<config>":
                raise
            raise ConfigError(cfg.source, e.key, e.problem) from None
        finally:
            store.close()
        if args.json:
            print_json(report.as_json())
        else:
            _print_text(report)
    finally:
        walkfirst.drop()  # not taken: the run failed before its index pass
        if _LEFT:  # the index writer, its last pages written during the output
            _LEFT[0].reap()
    # Exit 1 when a planned copy did not happen (vanished, changed, unreadable): the
    # archive is consistent but incomplete, and a re-run picks up what is left.
    st = report.stats
    return 1 if not report.dry_run and st["files_copied"] < st["to_copy"] else 0


def _print_text(r: Report) -> None:
    out = sys.stdout
    verb = "would copy" if r.dry_run else "copied"
    for c in r.copies:
        out.write(f"{verb} {show_path(c['source'])} -> {show_path(c['archive'])}\n")
    for d in r.archive_duplicates:
        out.write("archive duplicates: " + " = ".join(show_path(p) for p in d["paths"]) + "\n")
    for p in r.problems:
        sys.stderr.write(f"dedupd: {p['reason']}: {show_path(p['path'])}: "
                         f"{show_path(p['detail'])}\n")
    for a in r.actions:
        what = f"{a.get('keep', '')} <- {a.get('replace', '')}" if a["action"] == "hardlink" \
            else f"{a['path']} (in archive as {a['archive']})"
        out.write(f"{a['result']} {a['action']}: {show_path(what)}\n")
    for x in r.refused:
        sys.stderr.write(f"dedupd: not done ({x['reason']}): {show_path(x['path'])}: "
                         f"{show_path(x.get('detail', ''))}\n")
    for rec in r.recovered:
        out.write(f"recovered op {rec['op']}: {rec['before']} -> {rec['after']}\n")
    st = r.stats
    out.write(f"{r.name}{' (dry run)' if r.dry_run else ''}: {st['distinct_contents']} distinct "
              f"contents in {st['source_paths']} source files, {st['already_in_archive']} "
              f"already in the archive, {st['files_copied'] if not r.dry_run else st['to_copy']}"
              f" {verb} ({human_bytes(float(st['bytes_to_copy']))}); "
              f"{human_bytes(float(st['bytes_read']))} read, {st['problems']} problems, "
              f"{st['seconds']}s\n")
