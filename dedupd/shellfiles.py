"""Shell completion (bash, zsh) and the man page, generated from the CLI's parser.

`python -m dedupd.shellfiles OUTDIR` writes OUTDIR/dedupd.bash, OUTDIR/_dedupd
(zsh) and OUTDIR/dedupd.1; `make install` runs it with the installed package
and puts the files where bash-completion, zsh and man look. Generating them
from the parser at install time keeps them true to the installed version: a
new subcommand or option is completed and documented without anyone writing
either by hand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dedupd import __version__

SHELLS = ("bash", "zsh")
FILES = {"bash": "dedupd.bash", "zsh": "_dedupd", "man": "dedupd.1"}


def full_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand registered (the CLI loads only one)."""
    from dedupd.cli import build_parser

    return build_parser([], full=True)


def completion(shell: str, parser: argparse.ArgumentParser | None = None) -> str:
    """The completion script for shell ('bash' or 'zsh'). Arguments shown as PATH,
    FILE or DIR complete file names; the rest complete options and subcommands."""
    import shtab

    p = parser or full_parser()
    for action in _actions(p):
        if action.metavar in ("PATH", "FILE"):
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.metavar == "DIR":
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    text: str = shtab.complete(p, shell=shell)
    return text


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of parser and of its subcommands' parsers."""
    out = list(parser._actions)
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in dict.fromkeys(a.choices.values()):  # aliases share a parser
                out += _actions(sub)
    return out


def manpage(parser: argparse.ArgumentParser | None = None) -> str:
    """The man page (roff, section 1)."""
    from argparse_manpage.manpage import Manpage

    p = parser or full_parser()
    page = Manpage(p, _data={"project_name": "dedupd", "version": __version__,
                             "manual_title": "dedupd manual",
                             "description": p.description})
    return str(page)


def write_all(outdir: Path) -> list[Path]:
    """Write the bash and zsh completions and the man page into outdir; their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    parser = full_parser()
    texts = {FILES[s]: completion(s, parser) for s in SHELLS}
    texts[FILES["man"]] = manpage(parser)
    written = []
    for name, text in texts.items():
        path = outdir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        sys.stderr.write("usage: python -m dedupd.shellfiles OUTDIR\n")
        return 2
    for path in write_all(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
