"""Source paths confirmed against the archive by a byte compare, for their rows.

A copy phase (execute.py) writes a provenance row for a source path only once its
bytes are known to be an archive file's. Two kinds of path need a compare here:

- the paths of a content the archive holds already (plan.Known) whose rows are
  not valid as they are: each is compared with the archive file the rows name
  (the target), then with the group's other archive inodes;
- the other paths of a content just copied: another name of the copied inode, or
  a path sorted equal to its bytes (sortcopy.py), is the copy's already; any other
  is compared with the bytes the copy was verified against, or with the copy on
  the disk.

A path whose bytes differ from every archive file of its hash group is other
content with the same size and hash (an XXH3 collision, or a forged index row):
it is reported and goes to `collided`, which the phase plans as copies of their
own. A path that vanished, changed or could not be read is reported, no row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dedupd.consolidate.compare import Compared, hash_archived, same_as_data, same_bytes
from dedupd.consolidate.copyworker import StatWire
from dedupd.consolidate.inventory import SourcePath
from dedupd.consolidate.plan import Copy, Known
from dedupd.consolidate.rows import Rows
from dedupd.files.events import Problem
from dedupd.index.store import IndexedFile


@dataclass
class Counters:
    files_copied: int = 0
    bytes_copied: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    files_confirmed: int = 0  # source paths byte-compared against the archive
    files_unchanged: int = 0  # source paths whose provenance row was still valid
    rows_written: int = 0
    contents_sorted: int = 0  # distinct contents found in unsorted size groups
    # contents of plan.unnamed never named (source gone, changed or unreadable):
    # planned copies that did not happen, as a failed copy of plan.copies is
    unnamed_failed: int = 0
    unnamed_failed_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)


class Confirms:
    """The compares of one copy phase, counted in c, their rows queued in q."""

    def __init__(self, c: Counters, q: Rows) -> None:
        self.c, self.q = c, q
        self.collided: list[SourcePath] = []  # other content: to be copied on its own

    def known(self, k: Known) -> None:
        """Rows for the source paths of content the archive holds (module docstring)."""
        self.c.files_unchanged += len(k.fresh)
        self.q.still(k.fresh, k.target)
        if not k.check:  # a re-run's common case: every row still valid, nothing to read
            return
        full = k.content.full if k.content.full is not None else self._hashed(k)
        if full is None:  # the archive file could not be read (reported)
            return
        # the target first, then the other archive inodes of the group
        order = sorted(k.content.archive, key=lambda f: k.target not in f.paths)
        for s in k.check:
            for f in order:
                path = k.target if k.target in f.paths else f.paths[0]
                res = self._compare(s.path, s.file, path, f)
                if res.equal:
                    self.c.files_confirmed += 1
                    self.q.row(s, path, full)
                    break
                if res.problem is None or res.problem[0] != "differs":
                    break  # vanished/changed/unreadable: reported, nothing more to try
            else:
                self._collision(s)

    def others(self, cp: Copy, dest: bytes, stw: StatWire, head: int, full: bytes,
               data: bytes | None) -> None:
        """Rows for the other source paths of cp's content, copied to dest (stw, head,
        full: the copy's stat and hashes; data: the source bytes it was verified
        against, when the run read them)."""
        src = cp.src
        f = src.file
        dest_file: IndexedFile | None = None  # for a compare with the copy on the disk
        for s in cp.content.sources:
            if s.path == src.path:  # the copy's own: in its record (rows.Rows.copied)
                continue
            if s.file.key == f.key:
                self.q.row(s, dest, full)
                continue
            if s.path in cp.compared:  # equal to the bytes the copy was verified against
                self.c.files_confirmed += 1
                self.q.row(s, dest, full)
                continue
            if data is not None:  # the copy's verified bytes: read the other path only
                cmp = self._counted(s.path, same_as_data(s.path, s.file.ident, data))
            else:
                if dest_file is None:
                    dest_file = _indexed(dest, stw, head, full)
                cmp = self._compare(s.path, s.file, dest, dest_file)
            if cmp.equal:
                self.c.files_confirmed += 1
                self.q.row(s, dest, full)
            elif cmp.problem is not None and cmp.problem[0] == "differs":
                self._collision(s)

    def _hashed(self, k: Known) -> bytes | None:
        """The whole hash of k's target, read now: a content without one is an inode
        met alone (a source hardlinked into the archive); None when unreadable."""
        got = hash_archived(next(f for f in k.content.archive if k.target in f.paths),
                            k.target)
        if isinstance(got, Problem):
            self.c.problems.append(got)
            return None
        self.c.bytes_read += k.content.size
        self.q.hashes([got])
        return got.full

    def _compare(self, a: bytes, fa: IndexedFile, b: bytes, fb: IndexedFile) -> Compared:
        return self._counted(a, same_bytes(a, fa.ident, b, fb.ident))

    def _counted(self, path: bytes, res: Compared) -> Compared:
        """res, a compare of path: its bytes read counted, and any failure but a
        difference (vanished, changed, unreadable) reported."""
        self.c.bytes_read += res.bytes_read
        if res.problem and res.problem[0] != "differs":
            self.c.problems.append(Problem(path, res.problem[0], res.problem[1]))
        return res

    def _collision(self, s: SourcePath) -> None:
        self.collided.append(s)
        self.c.problems.append(Problem(s.path, "hash-collision", "same size and hash as "
                                       "other content, other bytes: imported on its own"))


def _indexed(dest: bytes, stw: StatWire, head: int, full: bytes) -> IndexedFile:
    """A placed copy as an index row (for a compare of another source path with it)."""
    _mode, ino, dev, _nlink, _uid, _gid, size, _atime, mtime, ctime = stw
    return IndexedFile(dev, ino, size, mtime, ctime, head, full, 0, (dest,))
