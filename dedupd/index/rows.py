"""What the index hands to the stages: an indexed inode (IndexedFile), a hash to
store (HashUpdate), a record batch's outcome (RecordResult), and the key of a path.

Split off dedupd/index/store.py by role (Store re-exports them: `from
dedupd.index.store import IndexedFile` keeps working).
"""

from __future__ import annotations

from _blake2 import blake2b  # hashlib's, without its import of OpenSSL (a scan's start)
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from dedupd.files.events import Ident
from dedupd.index.db import from_s64
from dedupd.tuples import NamedTuple  # typing's class syntax, built ~10x faster (tuples.py)


class IndexedFile(NamedTuple):
    """An inode as the index knows it, with the paths seen in the current scan.
    dev is the current st_dev of its filesystem (the index keeps filesystem ids).
    A NamedTuple (immutable; `_replace` for a changed copy): several are made per
    file of a scan (record, each hashing step), at a quarter of a frozen
    dataclass's cost."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    head: int | None
    full: bytes | None
    unstable: int
    paths: tuple[bytes, ...]

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    @property
    def path(self) -> bytes:
        return self.paths[0]

    @property
    def ident(self) -> Ident:
        """The identity it was indexed (and hashed) at: what a check before acting
        compares a descriptor or a name with."""
        return Ident(self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)


class HashUpdate(NamedTuple):
    dev: int
    ino: int
    head: int | None
    full: bytes | None
    # (size, mtime_ns, ctime_ns) the hashes were read at: when given, a row that
    # moved on meanwhile (re-recorded as changed) is left alone
    stat: tuple[int, int, int] | None = None


class RecordResult(NamedTuple):
    new: int
    changed: int
    unchanged: int
    files: tuple[IndexedFile, ...] = ()  # the batch's inodes, hashes kept when unchanged


def path_key(path: bytes) -> bytes:
    """A fixed-size key of a path (provenance rows): bytes paths may exceed btree key
    limits (PostgreSQL), and a collision-resistant digest keeps crafted names apart."""
    return blake2b(path, digest_size=16).digest()

def group_rows(rows: Iterable[Any], names: dict[tuple[int, int], list[bytes]],
               dev_of: Callable[[int], int | None]) -> Iterator[list[IndexedFile]]:
    """Rows (fs, ino, size, ...) ordered by size -> one list of IndexedFile per size
    (inodes with no name, or on a filesystem not reachable now, are left out)."""
    group: list[IndexedFile] = []
    for fs, n, size, mt, ct, head, full, unst in rows:
        paths = names.get((fs, n))
        dev = dev_of(fs) if paths else None
        if dev is None or not paths:
            continue
        if group and group[-1].size != size:
            yield group
            group = []
        group.append(IndexedFile(dev, from_s64(n), size, mt, ct,
                                 None if head is None else from_s64(head), full, unst,
                                 tuple(paths)))
    if group:
        yield group
