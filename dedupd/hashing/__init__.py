"""One hashing engine for every kind and for `dedupd scan`.

- `rule`: small files whole, else head first, whole only when heads collide
  (stated once, as the state of one size group);
- `read`: the one reader (open by handle, read, re-check) and the one mapping
  of a failed read to a Problem reason;
- `engine`: the reads scheduled in inode order, then in disk order, by threads
  (`Hasher`, for size groups from the index) or batch by batch as a walk
  records files (`Feeder`, the scan's early hashing);
- `forked`: Feeders in forked processes, so the walk never shares an
  interpreter lock with the readers;
- `stats`: counters and the settle rule; `writer`: hashes to the index.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dedupd.hashing.engine import Feeder, Hasher
    from dedupd.hashing.read import (
        HEAD_SIZE,
        WHOLE_READ,
        FileChanged,
        check_unchanged,
        open_checked,
        read_hashes,
        with_hashes,
    )
    from dedupd.hashing.rule import Group, Hashed
    from dedupd.hashing.stats import HashStats, Stability
    from dedupd.hashing.writer import HashWriter

# Each name is imported from its module when first used (PEP 562): a rescan that
# hashes nothing (its kept answer holds) never loads the engine or the reader.
_MODULE = {"Feeder": "engine", "Hasher": "engine", "Group": "rule", "Hashed": "rule",
           "HashStats": "stats", "Stability": "stats", "HashWriter": "writer",
           "HEAD_SIZE": "read", "WHOLE_READ": "read", "FileChanged": "read",
           "check_unchanged": "read", "open_checked": "read", "read_hashes": "read",
           "with_hashes": "read"}


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dedupd.hashing.{_MODULE[name]}"), name)
    globals()[name] = value
    return value


__all__ = ["HEAD_SIZE", "WHOLE_READ", "Feeder", "FileChanged", "Group", "Hashed", "Hasher",
           "HashStats", "HashWriter", "Stability", "check_unchanged", "open_checked", "read_hashes",
           "with_hashes"]
