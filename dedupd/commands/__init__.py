"""Subcommands. Each module has register(subparsers); add new ones to COMMANDS."""

from dedupd.commands import check_config, run, scan, stats

COMMANDS = [scan, run, check_config, stats]
