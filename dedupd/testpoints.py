"""Named points where a test can act deterministically, e.g. play an attacker who
swaps a directory for a symlink exactly between two steps (no sleeps, no races).

Production never registers anything: `at()` is one lookup in an empty dict.
Points (the windows of docs/safety.md):
  walk.subdir  before the walk opens a subdirectory it listed
  read.open    before a file is opened to be hashed (or its extents read)
  verify       before a pair is re-stat'ed and compared ahead of a change
  mutate       before a link, rename, exchange, unlink or mkdir
  batch        after a hardlink batch's PENDING rows are committed, before any name
               of it is verified and swapped (path: b"")
  bookmark     before a backup's snapshot is bookmarked (path: the snapshot's name)
  replace      before fsops/whole.replace_at renames its filled temp file over the
               name (path: the temp name)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Action = Callable[[str, bytes], None]
_actions: dict[str, Action] = {}


def at(point: str, path: bytes) -> None:
    act = _actions.get(point)
    if act is not None:
        act(point, path)


def action(point: str) -> Action | None:
    """What at(point, ...) would call now, for a loop that looks it up once (None in
    production)."""
    return _actions.get(point)


@contextmanager
def acting(points: tuple[str, ...], action: Action) -> Iterator[None]:
    """Call action(point, path) at each of points while the block runs (tests only)."""
    for p in points:
        _actions[p] = action
    try:
        yield
    finally:
        for p in points:
            _actions.pop(p, None)
