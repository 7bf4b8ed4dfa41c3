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

__all__ = ["HEAD_SIZE", "WHOLE_READ", "Feeder", "FileChanged", "Group", "Hashed", "Hasher",
           "HashStats", "HashWriter", "Stability", "check_unchanged", "open_checked", "read_hashes",
           "with_hashes"]
