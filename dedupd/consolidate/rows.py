"""The index rows of a copy phase, queued until the names they describe are durable.

The executor (execute.py) queues here, per placed copy, the archive file, the
hashes of the copy and of its source, and a provenance row per source path it
confirmed; per known content, the rows it confirmed or touched. flush() hands
them to the index writer (writer.py) -- only when the executor knows a sync made
every name among them durable -- in the order the writer applies them (files,
hashes, rows, touches).

Rows are queued in the writer's wire form (plain tuples), not as FileEvent,
HashUpdate and Provenance objects: each object was built only to be taken apart
again for the pipe. A copied file's four (its archive file, the hashes of both
inodes, its source's provenance row) go as one tuple (copied), which the writer
takes apart (writer.apply): they share the hashes, the path and the inodes, and
a first import queues one a file.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from dedupd.consolidate.inventory import SourcePath
from dedupd.consolidate.writer import IndexWriter
from dedupd.forkpipe import Wire
from dedupd.index.store import HashUpdate

FLUSH_EVERY = 256


class Rows:
    """One copy phase's queue of index writes (module docstring)."""

    def __init__(self, writer: IndexWriter, scan_id: int, name: str) -> None:
        self._writer, self.scan_id, self.name = writer, scan_id, name
        self._now = time.time()
        self._copies: list[Wire] = []
        self._hashes: list[Wire] = []
        self._rows: list[Wire] = []
        self._touch: list[bytes] = []
        # (source path, archive file) pairs whose equality is confirmed: prune candidates
        self.confirmed: list[tuple[SourcePath, bytes]] = []
        # per copy worker answer not yet flushed, the queues' lengths after its rows
        self._marks: list[tuple[int, int, int, int]] = []
        self._answers = self._flushed = 0  # answers queued; of those, flushed

    def copied(self, s: SourcePath, dest: bytes, stw: Wire, head: int, full: bytes) -> None:
        """A copy of s placed at dest (stw: its stat, copyworker.stat_wire; head, full:
        the hashes of both): the archive file, both inodes' hashes and s's row, in the
        copy record the writer takes apart (writer.expand)."""
        self.confirmed.append((s, dest))
        f = s.file
        self._copies.append((dest, stw, head, full, s.path, f.dev, f.ino, f.size, f.mtime_ns,
                             f.ctime_ns))

    def hashes(self, updates: Iterable[HashUpdate]) -> None:
        """Hashes read for the plan (after the archive files they may name)."""
        self._hashes.extend(tuple(h) for h in updates)

    def row(self, s: SourcePath, archive_path: bytes, full: bytes) -> None:
        """A source path confirmed equal to archive_path (its content's hash full)."""
        self.confirmed.append((s, archive_path))
        f = s.file
        self._rows.append((self.name, s.path, archive_path, full, f.size, f.dev, f.ino,
                           f.mtime_ns, f.ctime_ns, self._now, self._now))

    def still(self, fresh: Iterable[SourcePath], target: bytes) -> None:
        """Source paths whose rows still hold (unchanged, same archive file): touched."""
        for s in fresh:
            self._touch.append(s.path)
            self.confirmed.append((s, target))

    def full(self) -> bool:
        """Whether enough rows wait to be worth a flush (where the caller may flush)."""
        return len(self._rows) + len(self._touch) >= FLUSH_EVERY

    def end_answer(self) -> None:
        """The rows queued since are those of one more answer of the copy worker."""
        self._marks.append((len(self._copies), len(self._hashes), len(self._rows),
                            len(self._touch)))
        self._answers += 1

    def flush_through(self, answers: int) -> None:
        """Hand the writer the rows of the first `answers` answers (and whatever was
        queued before them), whose names a sync made durable; the rest wait."""
        n = min(answers, self._answers) - self._flushed
        if n <= 0:
            return
        c, h, r, t = self._marks[n - 1]
        if c or h or r or t:
            self._writer.write(self.scan_id, self._copies[:c], self._hashes[:h],
                               self._rows[:r], self.name, self._touch[:t], self._now)
        del self._copies[:c], self._hashes[:h], self._rows[:r], self._touch[:t]
        self._marks = [(a - c, b - h, x - r, y - t) for a, b, x, y in self._marks[n:]]
        self._flushed += n

    def flush(self) -> None:
        """Hand every queued row to the writer (archive files first, then hashes, then
        provenance: writer.apply); it writes them beside the next batch's copies."""
        if self._copies or self._hashes or self._rows or self._touch:
            self._writer.write(self.scan_id, self._copies, self._hashes, self._rows,
                               self.name, self._touch, self._now)
        self._copies, self._hashes, self._rows, self._touch = [], [], [], []
        self._marks, self._flushed = [], self._answers
