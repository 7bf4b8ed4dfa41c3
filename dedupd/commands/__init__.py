"""Subcommands. Each module has register(subparsers); add new ones to COMMANDS."""

from dedupd.commands import check_config, consolidate, run, scan, where

COMMANDS = [scan, run, check_config, consolidate, where]
