"""Overlap hashing and extent dedupe in an extent pass.

DedupeWorker dedupes groups already hashed while the next ones are hashed: one
thread, a bounded queue; the pass's generator stays the only driver (closing
it waits for the queued groups). The queue is long enough that the reads of
the next groups never wait for the dedupe of earlier ones.
"""

from __future__ import annotations

import queue
import threading

from dedupd.dedup.extent_group import ExtentDeduper
from dedupd.dedup.route import Group

DEDUPE_QUEUE = 256  # hashed groups waiting for the dedupe thread


class DedupeWorker:
    """Runs ExtentDeduper.dedupe_group in one thread, fed through a bounded queue.

    The deduper must not be used by anyone else until close() returned. An
    exception in the thread is raised again by the next submit() or close().
    """

    def __init__(self, deduper: ExtentDeduper) -> None:
        self.deduper = deduper
        self.q: queue.Queue[Group | None] = queue.Queue(maxsize=DEDUPE_QUEUE)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, name="dedupd-dedupe", daemon=True)
        self.t.start()

    def submit(self, group: Group) -> None:
        self._raise()
        self.q.put(group)

    def close(self) -> None:
        """Wait for queued groups to be done; re-raise a failure of the thread."""
        if self.t.is_alive():
            self.q.put(None)
            self.t.join()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue  # drain: the submitter learns of the failure and stops
            try:
                self.deduper.dedupe_group(item.size, item.files, item.full, item.updates)
            except BaseException as e:  # handed to the driving thread
                self.error = e
