"""The scan's recording of its walk's batches into the index, in a thread of its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dedupd.files.events import FileEvent
from dedupd.index.scanrow import ScanRow, id_of
from dedupd.index.store import IndexedFile, Store
from dedupd.queuethread import QueueThread
from dedupd.scan.walk import DirListed

AHEAD_MAX_DIRS = 50_000  # a rescan of more directories reads its groups after the walk


class Recorder:
    """Records walk batches in a thread of its own, so that the index's work
    (SQLite and psycopg release the GIL) overlaps the walk's system calls.

    At most two batches wait in the queue; an error in the writer (or in the
    sink) is raised again in the walking thread (at the next put or at exit).
    """

    def __init__(self, store: Store, scan: int | ScanRow,
                 sink: Callable[[Sequence[IndexedFile]], None] | None = None,
                 touch_inodes: bool = True) -> None:
        self.store, self.scan, self.sink = store, scan, sink
        self.touch_inodes = touch_inodes
        self.new = self.changed = self.unchanged = 0
        self.events = 0  # files recorded (not in a directory the walk skipped)
        # (path, digest) of every directory listed, for answers.fingerprint; None
        # when one had no digest, or past AHEAD_MAX_DIRS (no answer kept)
        self.listed: list[tuple[bytes, bytes]] | None = []
        self.same: list[bytes] = []  # directories the walk skipped (listing unchanged)

    def __enter__(self) -> Recorder:
        self.thread: QueueThread[list[Any]] = QueueThread(self._record, "record", 2)
        return self

    def call(self, job: Callable[[], None]) -> None:
        """Run job in the record thread, in turn with the batches (its connection)."""
        self.thread.put(job)  # type: ignore[arg-type]

    def put(self, batch: list[Any]) -> None:
        """A batch of FileEvents, with DirListed items from walk_listed."""
        self.thread.put(batch)

    def __exit__(self, *exc: object) -> None:
        self.thread.close(raise_error=exc[0] is None)

    def _record(self, batch: list[Any] | Callable[[], None]) -> None:
        if callable(batch):
            batch()
            return
        files: list[FileEvent] = []
        listed: list[DirListed] = []
        if DirListed not in set(map(type, batch)):  # files only (a first scan's): in C
            files = batch
        else:
            for e in batch:  # this loop runs once per file of a tree
                (listed if type(e) is DirListed else files).append(e)
        digests = [(d.path, d.digest) for d in listed if d.digest and not d.same]
        if self.listed is not None:
            self.listed += [(d.path, d.digest) for d in listed]
            if len(self.listed) > AHEAD_MAX_DIRS or any(not d.digest for d in listed):
                self.listed = None
        self.events += len(files)
        for d in listed:
            if d.same:
                self.same.append(d.path)
                self.unchanged += d.files
        if not files and not digests:  # directories skipped: nothing to write
            return
        r = self.store.record(id_of(self.scan), files, self.touch_inodes, digests)
        self.new, self.changed = self.new + r.new, self.changed + r.changed
        self.unchanged += r.unchanged
        if self.sink is not None:
            self.sink(r.files)
