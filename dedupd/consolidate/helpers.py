"""The processes a run's copies use, and the open-file budget they share."""

from __future__ import annotations

import contextlib
import resource

from dedupd.consolidate.copyworker import CopyWorker
from dedupd.consolidate.writer import IndexWriter


class Helpers:
    """The processes a run's copies use: the index writer (writer.py) and the copy
    worker (copyworker.py). Fork them early (run.py: before the index scan, while the
    heap is small, and before any thread); close(), finish() and wait(), or abandon(),
    them at the end."""

    def __init__(self, url: str, archive: bytes, policy: str) -> None:
        fd_budget()  # the open-file limit raised first: the worker holds a batch open
        self.writer = IndexWriter(url)
        try:
            self.worker = CopyWorker(archive, policy)
        except BaseException:
            self.writer.abandon()
            raise

    def close(self) -> None:
        """End both: the worker (its answers are all in) and the writer's input; the
        writer goes on with its last rows until finish()."""
        try:
            self.worker.close()
        except BaseException:
            self.writer.abandon()
            raise
        self.writer.end()

    def finish(self) -> int:
        """After close(): wait for the writer's last rows; the provenance rows it wrote
        (0 when called again). WriteFailed when it failed. It checkpoints the index
        after that (writer.py): wait() reaps it."""
        return self.writer.close(reap=False)

    def wait(self) -> None:
        """After finish(): reap the writer, its checkpoint over (writer.IndexWriter.wait)."""
        self.writer.wait()

    def abandon(self) -> None:
        self.worker.abandon()
        self.writer.abandon()


def fd_budget() -> int:
    """Files a batch may hold open: each staged copy keeps its temp file and its source
    open until placed (fsops.copy.DestDirs). The soft limit is raised to the hard one
    where that is allowed (commonly 1024 of 524288); a third of it stays for the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 16
    want = min(want, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(8, soft // 3)
