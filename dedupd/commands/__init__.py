"""Subcommands. Each module has register(subparsers); add new ones to COMMANDS."""

from dedupd.commands import (
    backup,
    backup_restore,
    check_config,
    consolidate,
    ctl,
    import_report,
    journal,
    recover,
    run,
    scan,
    stats,
    status,
    where,
)

COMMANDS = [scan, run, status, stats, ctl, check_config, journal, recover, consolidate, where,
            import_report, backup, backup_restore]
