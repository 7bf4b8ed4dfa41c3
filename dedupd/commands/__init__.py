"""Subcommands. Each module has register(subparsers); add new ones to COMMANDS."""

from dedupd.commands import check_config, consolidate, import_report, run, scan, where

COMMANDS = [scan, run, check_config, consolidate, where, import_report]
