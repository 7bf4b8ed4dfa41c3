"""Subcommands. Each module has register(subparsers); add new ones to COMMANDS."""

from dedupd.commands import check_config, journal, recover, run, scan

COMMANDS = [scan, run, check_config, journal, recover]
