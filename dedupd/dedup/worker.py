"""Overlap hashing and extent dedupe in an extent pass.

DedupeWorker dedupes groups already hashed while the next ones are hashed: one
thread, a bounded queue; the pass's generator stays the only driver (closing
it waits for the queued groups). The queue is long enough that the reads of
the next groups never wait for the dedupe of earlier ones.
"""

from __future__ import annotations

from dedupd.dedup.extent_group import ExtentDeduper
from dedupd.hashing import Group
from dedupd.queuethread import QueueThread

DEDUPE_QUEUE = 256  # hashed groups waiting for the dedupe thread


class DedupeWorker:
    """Runs ExtentDeduper.dedupe_group in one thread, fed through a bounded queue.

    The deduper must not be used by anyone else until close() returned. An
    exception in the thread is raised again by the next submit() or close().
    """

    def __init__(self, deduper: ExtentDeduper) -> None:
        self.deduper = deduper
        self.t = QueueThread(self._dedupe, "dedupd-dedupe", DEDUPE_QUEUE)

    def submit(self, group: Group) -> None:
        self.t.put(group)

    def close(self) -> None:
        """Wait for queued groups to be done; re-raise a failure of the thread."""
        self.t.close()

    def _dedupe(self, item: Group) -> None:
        self.deduper.dedupe_group(item.size, item.files, item.full, item.updates)
