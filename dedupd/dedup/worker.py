"""Overlap the three kinds of waiting in an extent pass: disk reads, hashing, dedupe.

Prefetcher: readahead hints for size groups about to be hashed. DedupeWorker:
extent dedupes of groups already hashed, while the next ones are hashed. Both
are single threads with bounded queues; the pass's generator stays the only
driver (closing it waits for at most a few queued groups).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Sequence

from dedupd.dedup.extent_group import ExtentDeduper
from dedupd.index.store import IndexedFile

LOOKAHEAD = 8  # size groups read ahead of the hashing
DEDUPE_QUEUE = 4  # hashed groups waiting for the dedupe thread
_NOATIME = getattr(os, "O_NOATIME", 0)


class Prefetcher:
    """Starts reading files that will be hashed soon, in a thread of its own.

    POSIX_FADV_WILLNEED queues readahead but may block while the device queue
    is full, so it runs beside the hashing, never in front of it. A dropped
    hint costs speed, nothing else.
    """

    def __init__(self) -> None:
        self.q: queue.Queue[list[IndexedFile] | None] = queue.Queue(maxsize=LOOKAHEAD)
        self.t = threading.Thread(target=self._run, name="dedupd-prefetch", daemon=True)
        self.t.start()

    def submit(self, files: list[IndexedFile]) -> None:
        with contextlib.suppress(queue.Full):  # never make the hashing wait for a hint
            self.q.put_nowait(files)

    def close(self) -> None:
        self.q.put(None)
        self.t.join(timeout=30)

    def _run(self) -> None:
        while (files := self.q.get()) is not None:
            for f in files:
                if f.full is None:
                    _willneed(f.path)


def _willneed(path: bytes) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | _NOATIME)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


class DedupeWorker:
    """Runs ExtentDeduper.dedupe_group in one thread, fed through a bounded queue.

    The deduper must not be used by anyone else until close() returned. An
    exception in the thread is raised again by the next submit() or close().
    """

    def __init__(self, deduper: ExtentDeduper) -> None:
        self.deduper = deduper
        self.q: queue.Queue[tuple[int, Sequence[IndexedFile], bytes | None] | None] = (
            queue.Queue(maxsize=DEDUPE_QUEUE))
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, name="dedupd-dedupe", daemon=True)
        self.t.start()

    def submit(self, size: int, files: Sequence[IndexedFile], full: bytes | None) -> None:
        self._raise()
        self.q.put((size, files, full))

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
                self.deduper.dedupe_group(*item)
            except BaseException as e:  # handed to the driving thread
                self.error = e
