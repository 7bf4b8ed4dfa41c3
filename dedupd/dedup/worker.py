"""Overlap hashing and extent dedupe in an extent pass.

DedupeWorker dedupes groups already hashed while the next ones are hashed: one
thread, a bounded queue; the pass's generator stays the only driver (closing
it waits for at most a few queued groups). Submitting a group starts the
readahead of its first bytes, so the disk works on the next groups while the
kernel compares the current one (its compare does not read ahead itself).
"""

from __future__ import annotations

import os
import queue
import threading

from dedupd.dedup import extent
from dedupd.dedup.extent_group import ExtentDeduper
from dedupd.dedup.route import Group

DEDUPE_QUEUE = 8  # groups waiting for the dedupe thread
PREFETCH_GROUP = 32 * 1024 * 1024  # readahead started per group on submit (about)
_RO = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0)


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

    def submit(self, group: Group, prefetch: bool = True) -> None:
        self._raise()
        if prefetch:
            _prefetch(group)
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
                if item.full is None:
                    self.deduper.dedupe_unverified(item.size, item.files, item.updates)
                else:
                    self.deduper.dedupe_group(item.size, item.files, item.full, item.updates)
            except BaseException as e:  # handed to the driving thread
                self.error = e


def _prefetch(g: Group) -> None:
    """Readahead of the first bytes of every member (a hint; failures are ignored)."""
    each = min(g.size, extent.CHUNK, max(extent.MIN_CALL, PREFETCH_GROUP // max(1, len(g.files))))
    for f in g.files:
        try:
            fd = os.open(f.path, _RO)
        except OSError:
            continue
        try:
            extent.prefetch([fd], 0, each)
        finally:
            os.close(fd)
