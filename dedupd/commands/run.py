"""`dedupd run`: serve the configured volumes (daemon); `--once` does one pass and exits."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from dedupd import forkpipe, preflight
from dedupd.commands.common import (
    add_common,
    add_progress_arg,
    load_config,
    nonempty,
    open_store,
    parse_size,
    path,
    whole_seconds,
)
from dedupd.config import Config, VolumeConfig
from dedupd.errors import DedupdError, UsageError, one_line
from dedupd.output import human_bytes, print_json, show_path
from dedupd.proc_priority import apply_priority
from dedupd.progress import Progress, open_progress
from dedupd.volumes import PassOptions, PassReport, Step, VolumePass, make_pass
from dedupd.volumes.detect import volume_for_path

HELP = """\
Deduplicate volumes.

Without --once this is the daemon (the mode of dedupd.service, Type=notify):
it serves every volume round-robin, runs backup jobs on their schedule,
answers `dedupd status` on the sockets in [daemon] runtime_dir, reloads the
config on SIGHUP and stops gracefully on SIGTERM. --detach forks it into the
background (for hosts without systemd); the command returns once the daemon
is ready and its pid is in --pidfile.

With --once: one pass over every volume (those in the config, or the paths or
volume names given) and exit: the mode for cron and systemd timers.

Destructive kinds (plain, zfs, pool) only describe what they would do until
the config says mode = "apply" or --apply is given; --dry-run never changes
anything, whatever the config says.
"""


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="deduplicate the configured volumes",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("volumes", nargs="*", type=nonempty, metavar="VOLUME",
                   help="volume names from the config or paths (default: all configured)")
    p.add_argument("--once", action="store_true", help="one pass over everything, then exit")
    p.add_argument("--detach", action="store_true",
                   help="run the daemon in the background (not under systemd)")
    p.add_argument("--pidfile", type=path, metavar="FILE",
                   help="lock and pid file (default RUNTIME_DIR/dedupd.pid)")
    p.add_argument("--log-file", type=path, metavar="FILE", default=Path("/var/log/dedupd.log"),
                   help="where a --detach daemon logs (default %(default)s)")
    p.add_argument("--apply", action="store_true",
                   help="act even where the config says mode = dry-run")
    p.add_argument("--force-rescan", action="store_true",
                   help="walk and record the whole volume: no change tracking, no "
                   "unchanged directory skipped")
    p.add_argument("--settle", type=whole_seconds, default=None, metavar="SECONDS",
                   help="override settle_seconds for this run")
    p.add_argument("--min-size", type=parse_size, default=None, metavar="N",
                   help="override min_size for this run")
    add_progress_arg(p)
    add_common(p, dry_run=True)
    p.set_defaults(func=run)


def select_volumes(cfg: Config, names: list[str], args: argparse.Namespace) -> list[VolumeConfig]:
    """Volumes by config name or by path; all configured ones when none is named."""
    chosen: list[VolumeConfig] = []
    for n in names or list(cfg.volumes):
        if n in cfg.volumes:
            chosen.append(cfg.volumes[n])
        elif os.path.isdir(n):
            chosen.append(volume_for_path(n))
        else:
            raise UsageError(f"{n}: neither a configured volume nor a directory")
    if not chosen:
        raise UsageError("no volumes: name a path or configure [volumes.NAME]")
    over: dict[str, Any] = {}
    if args.settle is not None:
        over["settle_seconds"] = args.settle
    if args.min_size is not None:
        over["min_size"] = args.min_size
    if args.apply:
        over["mode"] = "apply"
    return [dataclasses.replace(v, **over) for v in chosen]


def run(args: argparse.Namespace) -> int:
    if not args.once:
        return serve(args)
    if args.detach:
        raise UsageError("--detach is for the daemon; --once runs in the foreground")
    cfg = load_config(args)
    vols = select_volumes(cfg, args.volumes, args)
    preflight_or_fail(cfg, vols)
    apply_priority(cfg.daemon)  # [daemon] nice/ionice for one-shot runs too (cron, timers)
    store = open_store(args, cfg)
    reports = []
    try:
        # The passes run one after the other: the collector ignores what exists now
        # (modules, config) and runs rarely (a pass makes many objects, few cycles:
        # issue 16, 70 -> 10 ms of collections in a 3,000-file hardlink pass).
        with open_progress(args.progress) as prog, forkpipe.rare_gc():
            for v in vols:
                vp = make_pass(v, store, PassOptions(dry_run=args.dry_run,
                                                     force_rescan=args.force_rescan))
                for step in vp.steps():
                    if prog:
                        show_step(prog, v.name, step, vp)
                reports.append(vp.report())
    finally:
        store.close()
    if args.json:
        print_json({"volumes": [r.as_json() for r in reports]})
    else:
        for r in reports:
            print_report(r)
    return 0


def show_step(prog: Progress, volume: str, step: Step, vp: VolumePass) -> None:
    """A pass's progress after one step: walking, then hashing and deduping (which
    alternate, one size group at a time) on a second line."""
    from dedupd.stepper import live_counters

    if step.state not in ("scanning", "hashing", "deduping"):
        return  # idle: recovery of an earlier run, before the pass proper
    c = live_counters(vp)
    if step.state == "scanning":
        prog.phase(f"{volume}: walk")
        prog.update(c.get("files_seen", 0))
        return
    prog.phase(f"{volume}: hash+dedupe")
    prog.update(c.get("files_hashed", 0), c.get("bytes_read", 0),
                note=f"{c.get('groups', 0):,} groups")


def print_report(r: PassReport, now: float | None = None) -> None:
    """The one-shot summary. It must never read as "no duplicates" when files only
    wait out settle_seconds, nor "0 B reclaimed" when a dry run found some."""
    out = sys.stdout
    verb = "would" if r.dry_run else "did"
    saved = (f"would reclaim up to {human_bytes(r.bytes_would_reclaim)}" if r.dry_run
             else f"{human_bytes(r.bytes_reclaimed)} reclaimed")
    out.write(f"{r.volume} ({r.kind}{', dry run' if r.dry_run else ''}): "
              f"{r.counters.get('files_seen', 0)} files seen, "
              f"{r.counters.get('groups', 0)} duplicate groups, "
              f"{saved} in {r.seconds:.1f}s\n")
    if r.files_pending:
        out.write("  " + pending_line(r, time.time() if now is None else now) + "\n")
    for a in r.actions:
        out.write(f"  {verb} {a.get('action')}: {describe_action(a)}\n")
    for p in r.problems:
        out.write(f"  {p['reason']}: {show_path(p['path'])} {show_path(p.get('detail', ''))}\n")


def pending_line(r: PassReport, now: float) -> str:
    """How many candidate files wait to settle, and from when a pass takes them."""
    def when(t: float) -> str:
        fmt = "%H:%M:%S" if t - now < 86400 else "%Y-%m-%d %H:%M"
        return time.strftime(fmt, time.localtime(t))

    n = r.files_pending
    span = (f"from {when(r.pending_first)}" if r.pending_last - r.pending_first < 1
            else f"between {when(r.pending_first)} and {when(r.pending_last)}")
    return (f"{n} file{'s' if n != 1 else ''} that may have duplicates changed less than "
            f"settle_seconds ({r.settle_seconds:g} s) ago and wait{'s' if n == 1 else ''} "
            f"to settle: a pass {span} on considers {'them' if n != 1 else 'it'} "
            "(--settle 0 does not wait)")


def describe_action(a: dict[str, Any]) -> str:
    """One action, naming what stays (the reference) and what is replaced by it."""
    kind = a.get("action")
    if kind == "dedupe" and "reference" in a:
        dests = " ".join(show_path(p) for p in a.get("paths") or ())
        return f"{dests} against {show_path(a['reference'])}"
    if kind == "hardlink":
        return f"{show_path(a['replace'])} becomes a link to {show_path(a['keep'])}"
    if kind == "crossdrive":
        return (f"{show_path(a['replace'])} becomes a link to {show_path(a['keep'])} "
                f"(as {show_path(a['link'])} on its drive)")
    return " ".join(show_path(p) for p in a.get("paths") or ())


def preflight_or_fail(cfg: Config, vols: list[VolumeConfig]) -> None:
    """The machine-dependent checks of `check-config` for what this run serves:
    the first error is raised (exit 78), advice is logged."""
    found = preflight.check(cfg, vols, consolidate=False)
    for a in found.advice:
        logging.getLogger("dedupd").warning("%s", a)
    found.raise_first()


def _daemon_config(args: argparse.Namespace) -> tuple[Config, list[VolumeConfig]]:
    """The loader the daemon calls at start and on SIGHUP: config + volumes to serve,
    checked against the machine. Blocking (file reads, stats): not for the event loop."""
    cfg = load_config(args)
    vols = [] if not args.volumes and not cfg.volumes else select_volumes(
        cfg, args.volumes, args)  # none: a daemon for backup jobs only is fine
    preflight_or_fail(cfg, vols)
    return cfg, vols


def serve(args: argparse.Namespace) -> int:
    """Daemon mode, in the foreground or (--detach) in the background."""
    from dedupd.daemon import DaemonOptions
    from dedupd.detach import run_detached

    cfg = load_config(args)  # a config error is reported here, before any fork
    if args.log_level is None or (cfg.daemon.log_json and not args.log_json):
        from dedupd import log

        log.setup(args.log_level or cfg.daemon.log_level, args.log_json or cfg.daemon.log_json)
    opts = DaemonOptions(dry_run=args.dry_run, force_rescan=args.force_rescan, db_url=args.db,
                         log_level_fixed=args.log_level is not None, pidfile=args.pidfile)
    if args.detach:
        return run_detached(lambda: _serve_now(args, opts), args.log_file)
    return _serve_now(args, opts)


def _serve_now(args: argparse.Namespace, opts: Any) -> int:
    from dedupd.daemon import Daemon
    from dedupd.notify import Notifier

    try:
        d = Daemon(lambda: _daemon_config(args), opts)
        import asyncio  # here: 40 ms that `run --once` does not need

        rc = asyncio.run(d.serve())
    except DedupdError as e:
        # also tells a waiting `run --detach` parent (and systemd) why we did not start
        Notifier().send(STATUS=f"startup failed: {one_line(str(e))}", EXIT_STATUS=e.exit_code)
        sys.stderr.write(f"dedupd: error: {one_line(str(e))}\n")
        return e.exit_code
    if d.abandoned:
        # a step thread is still blocked in the kernel: do not wait for it at exit
        logging.shutdown()
        os._exit(rc)
    return rc
