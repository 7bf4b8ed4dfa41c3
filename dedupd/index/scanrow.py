"""A `dedupd scan`'s row in `scans`, written when the scan first writes anything.

A scan's id marks what it saw (`seen` of entries and inodes) and decides what it
forgets (names seen by earlier scans only), so it is needed only once the scan
writes. An unchanged rescan writes nothing at all: every directory is skipped, no
name is forgotten, its groups come from the index. Written at its start, its row
alone made such a rescan's index take a WAL: created and synced (with its
directory) at the first commit, then checkpointed, synced and removed at close
(3-5 ms of a rescan's wall on a quiet disk, 10-60 ms on a busy one). Ids still
grow with every scan that writes, so a scan's id is above every `seen` it meets.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dedupd.index.store import Store


class ScanRow:
    """The id of a scan of roots, its row written at the first read of `id` (by any
    thread: one row a scan). `written`: whether it has been."""

    __slots__ = ("_id", "_lock", "roots", "store")

    def __init__(self, store: Store, roots: Sequence[bytes]) -> None:
        self.store, self.roots = store, list(roots)
        self._id: int | None = None
        self._lock = threading.Lock()

    @property
    def written(self) -> bool:
        return self._id is not None

    @property
    def id(self) -> int:
        with self._lock:
            if self._id is None:
                self._id = self.store.begin_scan(self.roots, prepared=True)
            return self._id


def id_of(scan: int | ScanRow) -> int:
    """The id of a scan given by id or by its row (written now if not yet)."""
    return scan if isinstance(scan, int) else scan.id
