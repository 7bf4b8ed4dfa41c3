"""Subcommands. Each module has register(subparsers); list it in MODULES and name
its subcommands in NAMES.

The CLI imports only the module of the command being run (see cli.build_parser):
importing every command pulls in boto3, asyncio and the rest, which would cost a
`dedupd scan` a quarter of a second before it does anything.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# In --help order.
MODULES = ("scan", "run", "status", "stats", "ctl", "check_config", "journal", "recover",
           "consolidate", "where", "groups", "import_report", "backup", "backup_restore", "metrics")

# subcommand name -> module that registers it
NAMES = {
    "scan": "scan", "run": "run", "status": "status", "stats": "stats",
    "pause": "ctl", "resume": "ctl", "rescan": "ctl", "check-config": "check_config",
    "journal": "journal", "recover": "recover", "consolidate": "consolidate",
    "where": "where", "groups": "groups", "import": "import_report", "backup": "backup",
    "backups": "backup",
    "verify": "backup_restore", "restore": "backup_restore", "metrics": "metrics",
}


def load(name: str) -> ModuleType:
    return importlib.import_module(f"dedupd.commands.{name}")


def modules_for(argv: list[str]) -> list[ModuleType]:
    """The modules needed to parse argv: the named command's, or all (help, errors)."""
    if argv and argv[0] == "--version":
        return []
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in NAMES and not any(a in ("-h", "--help") for a in argv[: argv.index(first)]):
        return [load(NAMES[first])]
    return [load(m) for m in MODULES]
