"""`dedupd scan`'s walk, forked before its command line is parsed: argparse, its
parser and their imports (12 ms) then run beside the walk instead of before it.

A plain command line (the options below, in any order, and paths) is read here as
argparse will read it; anything else (an abbreviation, `--`, `-h`, an odd size)
and no walk is started here: commands/scan.start_walk starts it after argparse,
as before. Whatever is started here is only a guess: start_walk takes it (take())
only when the roots and walk options argparse gave are exactly those it walks,
and otherwise ends it and starts the right one. start() is called by cli.run
only, before anything else is imported; take() by start_walk.
"""

from __future__ import annotations

from dedupd.commands import SIZE_UNITS
from dedupd.tuples import TYPE_CHECKING  # no typing before the walk's fork

if TYPE_CHECKING:
    from dedupd.scan.walk import WalkOptions
    from dedupd.scan.walkproc import ForkedWalk

_FLAGS = frozenset({"--json", "--no-progress", "--progress", "--cross-mounts", "--log-json"})
_VALUED = frozenset({"--db", "--min-size", "--exclude", "--settle", "-c", "--config",
                     "--log-level"})
_walk: ForkedWalk | None = None  # the walk started here, until take() hands it over


def start(argv: list[str]) -> None:
    """Fork the walk of `dedupd <argv>` if argv is a plain `scan` command line."""
    global _walk
    got = _read(argv)
    if got is None:
        return
    paths, min_size, exclude, cross = got
    from dedupd import forkpipe

    forkpipe.quiet_gc()  # as start_walk does: see there
    from dedupd.scan.walk import WalkOptions, normalize_roots

    try:
        _walk = fork(normalize_roots(paths), WalkOptions(min_size, exclude, cross))
    except Exception:  # a guess: start_walk tries again, and reports the error
        _walk = None


def fork(roots: list[bytes], opts: WalkOptions) -> ForkedWalk:
    """A scan's walk of roots under opts, in its processes: the one form start() and
    commands/scan.start_walk fork it in, so that take() need compare only these two."""
    from dedupd.scan.walk import RECORD_BATCH
    from dedupd.scan.walkproc import RESCAN_WALKERS, ForkedWalk

    return ForkedWalk(roots, opts, RECORD_BATCH, workers=RESCAN_WALKERS, later=True)


def take(roots: list[bytes], opts: WalkOptions) -> ForkedWalk | None:
    """The walk started by start(), if it walks exactly these roots with these
    options; otherwise it is ended (None)."""
    global _walk
    walk, _walk = _walk, None
    if walk is None:
        return None
    if walk.roots == roots and walk.opts == opts:
        return walk
    walk.close()
    return None


def _read(argv: list[str]) -> tuple[list[str], int, tuple[str, ...], bool] | None:
    """(paths, min size, excludes, cross mounts) of a plain `scan` argv, else None."""
    if argv[:1] != ["scan"]:
        return None
    paths: list[str] = []
    exclude: list[str] = []
    min_size, cross = 1, False
    it = iter(argv[1:])
    for a in it:
        if a in _FLAGS:
            cross = cross or a == "--cross-mounts"
            continue
        name, eq, value = a.partition("=")
        if a in _VALUED or (eq and name in _VALUED and name.startswith("--")):
            if not eq:
                name, value = a, next(it, "")
                if not value or value.startswith("-"):
                    return None
            if name == "--min-size":
                size = _size(value)
                if size is None:
                    return None
                min_size = size
            elif name == "--exclude":
                exclude.append(value)
            continue
        if not a or a.startswith("-"):
            return None
        paths.append(a)
    return (paths, min_size, tuple(exclude), cross) if paths else None


def _size(text: str) -> int | None:
    """parse_size's reading of the plain forms (digits, then K, M, G or T), else None."""
    unit = text[-1:].lower() if text[-1:].isalpha() else ""
    digits = text[:len(text) - len(unit)]
    if unit not in SIZE_UNITS or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits) * SIZE_UNITS[unit]
