"""Subcommands. Each module has register(subparsers); add new ones to COMMANDS."""

from dedupd.commands import (
    check_config,
    consolidate,
    import_report,
    journal,
    recover,
    run,
    scan,
    where,
)

COMMANDS = [scan, run, check_config, journal, recover, consolidate, where, import_report]
