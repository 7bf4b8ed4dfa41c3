"""Subcommands. Each module has register(subparsers); add new ones to COMMANDS."""

from dedupd.commands import backup, backup_restore, check_config, run, scan

COMMANDS = [scan, run, check_config, backup, backup_restore]
