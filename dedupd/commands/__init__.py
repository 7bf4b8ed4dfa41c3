"""Subcommands. Each module has register(subparsers); list its subcommands in COMMANDS
with the one-line help its register() gives them.

The CLI imports only the module of the command being run (see cli.build_parser).
`dedupd --help`, a usage error or no command at all imports none: the command
list is drawn from COMMANDS (tests/unit/test_cli_help.py checks that it says
what the modules register). Importing every command pulls in the index, botocore,
asyncio and the rest: a quarter to half a second before anything is printed.
"""

from __future__ import annotations

from dedupd.tuples import TYPE_CHECKING

# this package is imported before `dedupd scan` forks its walk (commands/scan_first.py):
# typing only for the checker (dedupd/tuples.py)
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

# binary size units of the command line: common.parse_size and scan_first's reading of
# a plain command line (before its walk's fork, so here: this package is imported then)
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}

# subcommand -> (module that registers it, its one-line help), in --help order
COMMANDS: dict[str, tuple[str, str]] = {
    "scan": ("scan", "report duplicate files under PATHs"),
    "run": ("run", "deduplicate the configured volumes"),
    "status": ("status", "what the running daemon is doing"),
    "stats": ("stats", "index statistics of a volume"),
    "pause": ("ctl", "stop working on VOLUME (default: all) after the current step"),
    "resume": ("ctl", "continue paused volumes where they stopped"),
    "rescan": ("ctl", "start a full rescan of VOLUME (default: all): right away when idle, "
                      "otherwise as soon as the pass under way is done"),
    "check-config": ("check_config", "validate the config file"),
    "journal": ("journal", "list journalled dedup operations"),
    "recover": ("recover", "finish or roll back interrupted operations"),
    "consolidate": ("consolidate", "import new content from backup shares into an archive"),
    "where": ("where", "show where an archive file came from (or went)"),
    "groups": ("groups", "duplicate groups from the index (no walk), all hosts too"),
    "import": ("import_report", "verify a jdupes/rmlint/czkawka duplicate report"),
    "backup": ("backup", "back up a ZFS dataset (snapshot, send, upload)"),
    "backups": ("backup", "list a backup job's restore points"),
    "verify": ("backup_restore", "check a backup job's restore points on the target"),
    "restore": ("backup_restore", "restore a backup into a ZFS dataset"),
    "metrics": ("metrics", "print Prometheus metrics once (textfile collector)"),
}
NAMES = {name: module for name, (module, _help) in COMMANDS.items()}
MODULES = tuple(dict.fromkeys(NAMES.values()))


def load(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(f"dedupd.commands.{name}")


def named(argv: list[str]) -> str | None:
    """The module of the command argv runs; None when argv names none, or asks for
    the top-level help before naming one (`dedupd -h scan`)."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in NAMES and not any(a in ("-h", "--help") for a in argv[: argv.index(first)]):
        return NAMES[first]
    return None


def register_summaries(sub: Any) -> None:
    """Every subcommand as a name and its one-line help, without importing any
    command module: enough for the top-level help and for usage errors."""
    for name, (_module, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
