"""Subcommands. Each module has register(subparsers); add new ones to COMMANDS."""

from dedupd.commands import check_config, ctl, journal, recover, run, scan, stats, status

COMMANDS = [scan, run, status, ctl, check_config, journal, recover, stats]
