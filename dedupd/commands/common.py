"""Options and plumbing every subcommand shares: config, index, sizes."""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import TYPE_CHECKING

from dedupd.commands import SIZE_UNITS
from dedupd.defaults import DB_URL_SCHEMES, DEFAULT_CONFIG, DEFAULT_DB_URL

if TYPE_CHECKING:  # imported when a store is opened: `--help` of every command skips it
    from pathlib import Path

    from dedupd.config import Config
    from dedupd.index.store import Store

MAX_SECONDS = 10 * 365 * 86400.0  # ten years: beyond, a typo
# ASCII: \d would take any script's digits ("٣" as 3), which scan_first._size leaves
# to argparse: both refuse them
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE | re.ASCII)


def parse_size(text: str) -> int:
    """'8192', '64K', '1M', '2GiB' -> bytes (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 64K, 1M, 2G)")
    unit = m.group(2).lower()
    n = int(m.group(1)) * SIZE_UNITS[unit]
    if n >= 2**63:  # the index stores sizes in 64 bits
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (at most 8 EiB)")
    return n


def seconds(text: str) -> float:
    """A duration on the command line: a finite number >= 0 ('nan' would compare false
    with every age, so nothing would ever be too young; 'inf' cannot be slept)."""
    try:
        # float() reads any script's digits too: the command line takes ASCII's only
        v = float(text) if text.isascii() else math.nan
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0 or v > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (0 to "
                                         f"{MAX_SECONDS:.0f})")
    return v


def whole_seconds(text: str) -> int:
    """seconds() as a whole number (a config's settle_seconds)."""
    v = seconds(text)
    if v != int(v):
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}")
    return int(v)


def path(text: str) -> Path:
    """argparse's type of a file argument: a Path, with pathlib imported only when one
    is given (`dedupd scan` forks its walk before it imports pathlib); never ''
    (Path('') is the current directory)."""
    from pathlib import Path

    return Path(nonempty(text))


def existing_path(text: str) -> str:
    """argparse's type of a PATH that must exist when the command starts (a tree to
    walk): a missing one is a usage error, not an empty report with a "vanished"
    problem, and '' is refused rather than taken (by realpath) for the current
    directory. Other stat errors are left to the walk, which reports them."""
    nonempty(text)
    try:
        os.stat(text)
    except (FileNotFoundError, NotADirectoryError):
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}") from None
    except OSError:
        pass
    return text


def nonempty(text: str) -> str:
    """argparse's type of a path argument that may name a file gone by now, but
    never '' (which os.path and pathlib would take for the current directory)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names nothing")
    return text


def db_url(text: str) -> str:
    """argparse's type of --db: a usage error (exit 2) before anything starts, as
    [database].url is a config error, not a failure once the index is opened."""
    if not text.startswith(DB_URL_SCHEMES):
        raise argparse.ArgumentTypeError(
            "must be a sqlite:/// or postgresql:// URL, e.g. sqlite:////var/lib/x.db; "
            f"got {text!r}")
    return text


def add_common(p: argparse.ArgumentParser, *, json_flag: bool = True,
               dry_run: bool = False) -> None:
    g = p.add_argument_group("common options")
    g.add_argument("-c", "--config", type=path, metavar="FILE",
                   help=f"config file (default {DEFAULT_CONFIG}; "
                   "missing default = built-in defaults)")
    g.add_argument("--db", metavar="URL", type=db_url,
                   help="index database URL, overrides [database].url "
                   "(sqlite:////path/x.db or postgresql://user@host/db)")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    g.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    if json_flag:
        g.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    if dry_run:
        g.add_argument("-n", "--dry-run", action="store_true",
                       help="show what would be done; change nothing")


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show progress on stderr (default: when stderr is a terminal)")


def load_config(args: argparse.Namespace) -> Config:
    """The config named by -c (must exist), else the default one if present."""
    from dedupd import config

    if args.config is not None:
        return config.load(args.config)
    return config.load(DEFAULT_CONFIG, missing_ok=True)


def open_store(args: argparse.Namespace, cfg: Config) -> Store:
    return _store(args.db or cfg.database.url, cfg.database.host)


def open_index(args: argparse.Namespace) -> Store:
    """open_store(args, load_config(args)) for a command that needs nothing else of
    the config: without a config file (no -c, no default one) the built-in
    defaults' index, without importing the config's parser (8 ms of a rescan)."""
    if args.config is None and not os.path.exists(DEFAULT_CONFIG):
        return _store(args.db or DEFAULT_DB_URL, None)
    return open_store(args, load_config(args))


def _store(url: str, host: str | None) -> Store:
    from dedupd.files.fsid import host_identity
    from dedupd.index.store import Store

    return Store(url, host_identity(host))
