"""One worker thread fed through a bounded queue, its failure handed back.

The scan's recorder and pre-hasher and the extent pass's dedupe worker all
overlap work this way. An exception in the thread is raised again in the
feeding thread, by the next put() or by close(); after it, the items still
queued are drained unprocessed, so that put() never blocks on a dead thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueThread(Generic[T]):
    def __init__(self, work: Callable[[T], None], name: str, maxsize: int) -> None:
        self.work = work
        self.q: queue.Queue[T | None] = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def put(self, item: T) -> None:
        self.raise_error()
        self.q.put(item)

    def close(self, raise_error: bool = True) -> None:
        """Wait for the queued items; then raise the thread's failure, if any."""
        if self.thread.is_alive():
            self.q.put(None)
            self.thread.join()
        if raise_error:
            self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is not None:
                continue  # drain
            try:
                self.work(item)
            except BaseException as e:  # handed to the feeding thread
                self.error = e
