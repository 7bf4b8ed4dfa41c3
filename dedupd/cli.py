"""The `dedupd` command: argparse front end. Each subcommand lives in dedupd/commands/."""

from __future__ import annotations

import contextlib
import os
import sys

from dedupd import __version__
from dedupd.errors import EXIT_FAILURE, EXIT_USAGE, DedupdError, TemporaryFailure, one_line
from dedupd.tuples import TYPE_CHECKING

# argparse is imported by build_parser, typing and the commands' table only for
# the checker or after: `dedupd scan` forks its walk before (run, scan_first.py)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

EPILOG = """\
examples:
  dedupd scan /srv/photos /mnt/backup       report duplicate files
  dedupd scan --json --min-size 1M /srv     the same, for scripts
  dedupd check-config -c /etc/dedupd/dedupd.toml

exit status: 0 ok, 1 failure, 2 usage, 75 temporary (retry later), 78 config error
"""


def _parser_class() -> type[argparse.ArgumentParser]:
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {one_line(message)}\n")
            raise SystemExit(EXIT_USAGE)

        def _get_formatter(self) -> argparse.HelpFormatter:
            """argparse's, with the width shutil.get_terminal_size would give: argparse
            makes a formatter for every argument added (to check its metavar), and its
            own would import shutil (with zlib, bz2 and lzma) to size it: 2 ms of every
            command's start, before `dedupd scan` can fork its walk."""
            make: Any = self.formatter_class  # typeshed's protocol has no width
            return make(prog=self.prog, width=_columns() - 2)  # type: ignore[no-any-return]

    return _Parser


def _columns() -> int:
    with contextlib.suppress(KeyError, ValueError):
        if (n := int(os.environ["COLUMNS"])) > 0:
            return n
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    return 80


def build_parser(argv: Sequence[str] | None = None, *, full: bool = False
                 ) -> argparse.ArgumentParser:
    """The parser for argv: only the named subcommand's module is imported, none
    when argv names no command (see dedupd.commands). full: every subcommand's
    whole parser (completions and the man page)."""
    import argparse

    from dedupd import commands

    parser = _parser_class()
    p = parser(
        prog="dedupd",
        description="Deduplicate, consolidate and back up a storage host.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"dedupd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser)
    sub.required = True
    module = commands.named(list(sys.argv[1:] if argv is None else argv))
    if full:
        for m in commands.MODULES:
            commands.load(m).register(sub)
    elif module is not None:
        commands.load(module).register(sub)
    else:
        commands.register_summaries(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    try:
        # a command's work that comes before logging is set up (logging imports
        # threading, traceback and more): `dedupd scan` forks its walk there, or
        # takes the one cli.run forked before parsing (commands/scan_first.py)
        if (early := getattr(args, "early", None)) is not None:
            early(args)
        if getattr(args, "log_later", False):
            _setup_log_when_imported(args)
        else:
            _setup_log(args)
        return int(args.func(args) or 0)
    except DedupdError as e:
        sys.stderr.write(f"dedupd: error: {one_line(str(e))}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("dedupd: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_FAILURE
    except OSError as e:
        if (out := _out_of_files(e)) is None:
            _bug(args)
            return EXIT_FAILURE
        sys.stderr.write(f"dedupd: error: {one_line(str(out))}\n")
        return out.exit_code
    except Exception:
        _bug(args)
        return EXIT_FAILURE


def _out_of_files(e: OSError) -> DedupdError | None:
    """Running out of file descriptors, wherever it happened (a walk, a pipe to a
    helper process, a handle), as a clear error: a limit of this process or of the
    host, not a bug, so no traceback. EMFILE is exit 1 (a re-run meets the same
    `ulimit -n`), ENFILE 75 (the system's table frees as other processes close
    files). A failing disk or filesystem (EIO, EROFS, ENOSPC, EDQUOT) is exit 1
    too. None for any other error."""
    import errno

    if e.errno == errno.ENFILE:
        return TemporaryFailure("the system's table of open files is full (ENFILE)")
    if e.errno in (errno.EIO, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        # the disk or filesystem failed, went read-only or is full: the host's, no bug
        name = "" if e.filename is None else f": {os.fsdecode(e.filename)}"
        return DedupdError(f"{e.strerror or e}{name}")
    if e.errno != errno.EMFILE:
        return None
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return DedupdError(f"too many open files: the limit (ulimit -n) is {soft}")


def _bug(args: argparse.Namespace) -> None:
    """Log the exception being handled as a bug, with its traceback."""
    _setup_log(args)  # again, if early() failed before it
    import logging

    logging.getLogger("dedupd").exception("unexpected error (this is a bug; please report)")


def _setup_log(args: argparse.Namespace) -> None:
    from dedupd import log

    log.setup(getattr(args, "log_level", None) or "info", getattr(args, "log_json", False))


def _setup_log_when_imported(args: argparse.Namespace) -> None:
    """_setup_log, done when the logging module is first imported (now, if it is
    already): a command that logs nothing never imports it (threading, traceback,
    string and more: 5 ms of an unchanged rescan). Whatever imports it first, its
    records get the handler, level and format of _setup_log."""
    if "logging" in sys.modules:
        _setup_log(args)
    else:
        sys.meta_path.insert(0, _WhenImported("logging", lambda: _then_setup_log(args)))


def _then_setup_log(args: argparse.Namespace) -> None:
    # imported by dedupd.log itself (_setup_log's import, in cli.main's error path):
    # that _setup_log sets it up once dedupd.log is whole
    if (mod := sys.modules.get("dedupd.log")) is None or hasattr(mod, "setup"):
        _setup_log(args)


class _WhenImported:
    """A sys.meta_path finder that runs `then` right after module `name` is first
    imported (its own finder and loader do the import), and then leaves."""

    def __init__(self, name: str, then: Any) -> None:
        self.name, self.then = name, then

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec: Any = find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _Then(spec.loader, self.then)
        return spec


class _Then:
    """A module loader that runs `then` after the module it wraps has executed."""

    def __init__(self, loader: Any, then: Any) -> None:
        self.loader, self.then = loader, then

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.then()


def run() -> None:
    """The console entry point: main(), then exit without the interpreter's
    teardown, which frees every object one by one and costs a short command
    (a scan, a status query) 0.05 to 0.2 s. Output is flushed and logging shut
    down first; usage errors, --help and --version exit through SystemExit.
    A plain `dedupd scan` command line has its walk forked first of all
    (commands/scan_first.py), before argparse is even imported."""
    if sys.argv[1:2] == ["scan"]:
        from dedupd.commands import scan_first

        scan_first.start(sys.argv[1:])
    rc = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        rc = rc or EXIT_FAILURE
    sys.stderr.flush()
    # never imported when early() failed, nor by a scan that logged nothing (log_later)
    if (logging := sys.modules.get("logging")) is not None:
        logging.shutdown()
    os._exit(rc)
