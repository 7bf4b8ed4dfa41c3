"""Whole reads of one size's members side by side: hashed and byte-compared in one read.

The hardlink path compares bytes before every link (a hash only finds candidates,
DESIGN.md). When the hasher must read several members of one size whole anyway,
reading them chunk by chunk side by side gives both at once: each member's hashes
for the index (exactly what hashing.read.read_one gives) and which members hold the
same bytes, so the linker need not read them all a second time (issue 16).

The evidence is a `Proofs` entry: the members found equal, each with the identity
(dev, ino, size, mtime, ctime) its descriptor had before and after the read. The
linker trusts it only for files that still have that identity when their batch is
verified, after its PENDING commit (dedup/hardlink.py `_compare`): the same check
the byte compare there makes after reading, so a writer at any point after the read
moves ctime and is refused as before. Files without evidence (one side hashed in an
earlier pass, a group too large for one read, a failed read) are compared there.

Equal members are hashed once (their bytes are the same); a member that differs
from the others continues from a copy of their hash state at the chunk where it
left them. A member read as its first read (the hasher's whole_first: no head known,
so no head matched another's) that differs from every other is read no further: it
gets its head only, as a head read would have given it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from dedupd.files.events import Ident, Problem
from dedupd.hashing.read import (
    HEAD_SIZE,
    Dirs,
    FileChanged,
    Got,
    check_unchanged,
    from_cache,
    open_checked,
    problem,
)
from dedupd.index.store import IndexedFile

BUF = 1 << 17  # per member and step: stays in the CPU cache between read and compare
AHEAD = 8 << 20  # asked for ahead per member (WILLNEED): a cold disk reads long runs
MAX_FILES = 64  # members read side by side at once (descriptors and buffers held)
POOL = 16  # buffers a thread keeps from one read to the next (2 MiB)
_tls = threading.local()

Key = tuple[int, int]


class Proofs:
    """Which inodes a side-by-side read found byte-for-byte equal, at which identity.
    Thread-safe: the hasher's threads add, the linker asks and forgets."""

    def __init__(self) -> None:
        self._of: dict[Key, tuple[Ident, int]] = {}
        self._lock = threading.Lock()
        self._n = 0

    def add(self, members: Sequence[Ident]) -> None:
        with self._lock:
            self._n += 1
            for i in members:
                self._of[(i.dev, i.ino)] = (i, self._n)

    def equal(self, a: Ident, b: Ident) -> bool:
        """Were a and b, with exactly these identities, read and found equal together?"""
        pa, pb = self._of.get((a.dev, a.ino)), self._of.get((b.dev, b.ino))
        return pa is not None and pb is not None and pa[1] == pb[1] \
            and pa[0] == a and pb[0] == b

    def forget(self, keys: Sequence[Key]) -> None:
        with self._lock:
            for k in keys:
                self._of.pop(k, None)

    def __len__(self) -> int:
        return len(self._of)


@dataclass
class _Member:
    n: int  # index in the caller's list
    f: IndexedFile
    fd: int
    buf: bytearray
    ahead: int  # the offset from which the next WILLNEED asks
    missed: bool = False  # a read the page cache did not answer whole


@dataclass
class _Class:
    """Members equal so far, and the hash state of their common bytes."""

    members: list[_Member]
    h: xxhash.xxh3_128
    head: int


class Together:
    """The hasher's `together` reader (dedupd.hashing.engine.Together) for one pass:
    records what it found equal in `proofs`. `warm` until one of its reads is not
    answered whole by the page cache (or its filesystem cannot tell: tmpfs, FUSE)."""

    def __init__(self, proofs: Proofs) -> None:
        self.proofs = proofs
        self.warm = True

    def __call__(self, files: list[IndexedFile]) -> list[Got | Problem]:
        out: list[Got | Problem] = []
        for i in range(0, len(files), MAX_FILES):
            out += read_together(files[i:i + MAX_FILES], self.proofs, self)
        return out


def read_together(files: Sequence[IndexedFile], proofs: Proofs,
                  reader: Together | None = None) -> list[Got | Problem]:
    """Read members of one size (at most MAX_FILES) side by side: one outcome per file,
    in order (a Got as read_one gives it, or the Problem of a failed read); every set
    of two or more found equal goes to proofs. Each descriptor is checked against its
    file's identity right after opening and again after the last read. reader: told
    (warm = False) when a read missed the page cache."""
    out: list[Got | Problem | None] = [None] * len(files)
    live: list[_Member] = []
    size = files[0].size if files else 0
    # Members read as their first read (whole_first: no head known) may part at once:
    # the first step is a head's, and nothing is asked ahead before it, so a member
    # that equals no other costs what its head read would have (a tree of many
    # same-size, different files: fixed-size images, records).
    first = HEAD_SIZE if size > BUF and any(f.head is None for f in files) else BUF
    dirs = Dirs()
    bufs = _buffers(len(files))
    try:
        for n, f in enumerate(files):
            try:
                live.append(_Member(n, f, open_checked(f, dirs), bufs[n],
                                    0 if first == BUF else first))
            except (FileChanged, OSError) as e:
                out[n] = problem(f, e)
        classes = [_Class(live, xxhash.xxh3_128(), xxhash.xxh3_64_intdigest(b""))] \
            if live else []
        off = 0
        while off < size and classes:
            n = min(BUF if off else first, size - off)
            classes = [d for c in classes for d in _step(c, off, n, out)]
            off += n
            if off < size:
                classes = [c for c in classes if not _parted(c, off, out)]
        for c in classes:
            _finish(c, size, out, proofs)
    finally:
        for m in live:
            os.close(m.fd)
            if m.missed and reader is not None:
                reader.warm = False
        dirs.close()
    assert all(o is not None for o in out)
    return out  # type: ignore[return-value]


def _step(c: _Class, off: int, n: int, out: list[Got | Problem | None]) -> list[_Class]:
    """Read the next n bytes of every member of c; c split by what they hold. Each
    part is a view of its first member's buffer; another member is in it when its
    buffer starts with those n bytes (one memcmp, and no copy of a short last chunk:
    one 100 KiB copy per member had malloc grow and trim its heap once per group)."""
    parts: list[tuple[memoryview, list[_Member]]] = []
    for m in c.members:
        try:
            _fill(m, off, n)
        except (FileChanged, OSError) as e:
            out[m.n] = problem(m.f, e)
            continue
        buf = m.buf
        for view, same in parts:
            if buf.startswith(view):
                same.append(m)
                break
        else:
            parts.append((memoryview(buf)[:n], [m]))
    if not parts:
        return []
    # Copies of the state before this chunk for every part but the first.
    states = [c.h] + [c.h.copy() for _ in parts[1:]]
    out_classes = []
    for (view, same), h in zip(parts, states, strict=True):
        h.update(view)
        head = xxhash.xxh3_64_intdigest(view[:HEAD_SIZE]) if off == 0 else c.head
        out_classes.append(_Class(same, h, head))
    return out_classes


def _parted(c: _Class, nread: int, out: list[Got | Problem | None]) -> bool:
    """A member that differs from every other, read as its first read (no head known:
    the hasher's whole_first), is read no further: its outcome is its head, as a head
    read gives it (the rule asks for its whole only if that head matches another's)."""
    if len(c.members) != 1 or c.members[0].f.head is not None:
        return False
    m = c.members[0]
    try:
        check_unchanged(m.fd, m.f)
        out[m.n] = Got(c.head, None, nread)
    except FileChanged as e:
        out[m.n] = problem(m.f, e)
    return True


def _buffers(n: int) -> list[bytearray]:
    """n buffers of BUF bytes, the first POOL of them this thread's own, reused from one
    read to the next: a new 128 KiB bytearray is a new mapping (malloc's mmap threshold),
    zeroed and faulted in page by page, then unmapped (issue 16: on a warm cache, half
    the time of the reads). Every step fills the bytes it compares before comparing."""
    pool: list[bytearray] | None = getattr(_tls, "pool", None)
    if pool is None:
        pool = _tls.pool = [bytearray(BUF) for _ in range(POOL)]
    return pool[:n] + [bytearray(BUF) for _ in range(n - POOL)]


def _fill(m: _Member, off: int, n: int) -> None:
    """Exactly n bytes at off into m.buf; FileChanged if the file ends before. Past what
    was asked for ahead, the page cache is read first (hashing.read.from_cache): only
    what it does not hold is asked for (WILLNEED), so a warm cache costs no advice. The
    first read (a head's, when nothing is asked ahead before it) tries the cache too:
    members that part there are read no further, and their misses must still count."""
    mv = memoryview(m.buf)
    got = 0
    if off >= m.ahead or not off:  # a first read (a head's: no advice) tells a miss too
        got = from_cache(m.fd, m.f.dev, mv[:n], off)
        if got < n:
            m.missed = True
            if off >= m.ahead:
                os.posix_fadvise(m.fd, off + got, AHEAD, os.POSIX_FADV_WILLNEED)
                m.ahead = off + got + AHEAD
    while got < n:
        k = os.preadv(m.fd, [mv[got:n]], off + got)
        if not k:
            raise FileChanged(os.fsdecode(m.f.path))
        got += k


def _finish(c: _Class, size: int, out: list[Got | Problem | None], proofs: Proofs) -> None:
    """Each member's outcome after the closing identity check; the equal ones' proof."""
    ok = []
    for m in c.members:
        try:
            check_unchanged(m.fd, m.f)
        except FileChanged as e:
            out[m.n] = problem(m.f, e)
            continue
        ok.append(m)
    full = c.h.digest()
    for m in ok:
        out[m.n] = Got(c.head, full, size)
    if len(ok) >= 2:
        proofs.add([m.f.ident for m in ok])
