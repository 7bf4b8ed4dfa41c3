"""Sort an unhashed size group into contents while reading it for the copies.

A first import holds size groups that only the sources have and nothing has
hashed (inventory.Unsorted). Hashing them first and reading them again for the
copy and for the byte compare of the duplicates reads every file twice; here
each inode is read once, in source order (config order, then path):

- its bytes are hashed as read, and compared byte for byte with each content
  of the group found so far that has the same hash: equal -> another source
  path of that content (its handle is closed, its row waits for the content's
  verified copy); a hash match with other bytes is reported as hash-collision
  and the file is content of its own: a hash never merges anything;
- a new content gets its name (the EXIF date from the bytes in memory); the
  run writes its bytes to a staged file (execute.py), which goes with the open
  handle to the copy worker (consolidate/copyworker.py): after the batch's sync
  it compares the copy read back from the disk with the source re-read through
  that handle, whose fstat must still show the inode read, unchanged.

Further names of an inode already read are that inode's content (no read).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dedupd.consolidate.inventory import Content, SourcePath, Unsorted
from dedupd.consolidate.plan import Copy
from dedupd.files.events import Problem
from dedupd.fsops.source import CopyError, SourceDirs, SourceRead, read_source
from dedupd.index.store import HashUpdate

# (content with its first source, that source's bytes, if read) -> the named copy, or None
NewCopy = Callable[[Content, bytes | None], Copy | None]
_new_hash = tuple.__new__  # a NamedTuple's own __new__ is a Python function


class _Found:
    """One content of the group: its bytes (as its first source was read), its paths."""

    __slots__ = ("data", "full", "paths", "compared", "copy", "read")

    def __init__(self, data: bytes, full: bytes, first: SourcePath) -> None:
        self.data, self.full, self.paths = data, full, [first]
        self.compared: list[bytes] = []  # paths of other inodes found equal to data
        self.copy: Copy | None = None
        self.read: SourceRead | None = None  # its first source as read, its handle open


@dataclass
class SortedGroup:
    copies: list[tuple[Copy, SourceRead]] = field(default_factory=list)  # to stage
    hashes: list[HashUpdate] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    bytes_read: int = 0
    contents: int = 0  # distinct contents found in the group


def sort_group(u: Unsorted, new_copy: NewCopy, dirs: SourceDirs | None = None
               ) -> SortedGroup:
    """Read every inode of u once (opened through dirs' directory handles when given);
    name each new content (module docstring). The handles of the copies' sources stay
    open (the caller closes them)."""
    out = SortedGroup()
    found: list[_Found] = []
    by_full: dict[bytes, list[_Found]] = {}  # the contents found so far, by hash
    by_inode: dict[tuple[int, int], _Found] = {}
    size, hashes, nread = u.size, out.hashes, 0
    for s in u.sources:
        f = s.file
        key = (f.dev, f.ino)
        known = by_inode.get(key)
        if known is not None:  # another name of an inode already read
            known.paths.append(s)
            first = known.paths[0].file
            if key != (first.dev, first.ino):  # a duplicate's: compared as it was
                known.compared.append(s.path)
            continue
        try:
            r = read_source(s.path, f.ident, dirs)
        except CopyError as e:
            out.problems.append(Problem(s.path, e.reason, e.detail))
            continue
        data, full = r.data, r.full
        nread += len(data)
        hashes.append(_new_hash(HashUpdate, (f.dev, f.ino, r.head, full,
                                             (f.size, f.mtime_ns, f.ctime_ns))))
        same_hash = by_full.get(full)
        if same_hash is not None:
            match = None
            for x in same_hash:
                if x.data == data:
                    match = x
                    break
            if match is not None:
                r.close()  # compared while open and unchanged after the read (read_source)
                match.paths.append(s)
                match.compared.append(s.path)
                by_inode[key] = match
                continue
            out.problems.append(Problem(s.path, "hash-collision", "same size and hash as "
                                        "other content, other bytes: imported on its own"))
        x = _Found(data, full, s)
        found.append(x)
        if same_hash is None:
            by_full[full] = [x]
        else:
            same_hash.append(x)
        by_inode[key] = x
        x.copy = new_copy(Content(size, full, (), (s,)), data)
        if x.copy is None:  # no name for it (reported): its duplicates wait too
            r.close()
            continue
        x.read = r  # open until the copy worker has its own handle of it
    out.bytes_read = nread
    out.contents = len(found)
    for x in found:
        cp = x.copy
        if cp is not None and x.read is not None:
            if len(x.paths) > 1:  # built directly: dataclasses.replace costs 15 us a copy
                cp = Copy(Content(size, x.full, (), tuple(x.paths)), cp.src, cp.dest, cp.date,
                          frozenset(x.compared))
            out.copies.append((cp, x.read))  # else as named: its one path, none compared
    return out
