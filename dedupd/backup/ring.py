"""One spooled chunk shared by two threads, so uploads overlap the stream.

The producer (zfs send | compress, hashed as it is read) writes chunk k+1 into
the very temp file the uploader is still sending chunk k from, always behind
the uploader's read position. Temporary disk stays at one chunk while both
run, and memory at two 1 MiB buffers.

The price: once the producer has overwritten the start of chunk k, a retry of
chunk k cannot rewind its body. The body knows the overwritten range and
raises BodyGone instead of handing out the next chunk's bytes; upload.py then
regenerates the stream (resume: chunks already confirmed are not sent again).
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dedupd.backup.chunker import READ_SIZE, Spool, cut
from dedupd.backup.live import LiveFeed
from dedupd.errors import DedupdError


class BodyGone(DedupdError):
    """A rewind asked for bytes of a chunk that the next chunk already replaced."""


class RingAborted(DedupdError):
    """The other side gave up; the message says why."""


@dataclass(frozen=True)
class Sealed:
    """A complete chunk in the ring: its size and digests are known before its upload."""

    seq: int
    size: int
    sha256: str  # hex
    md5: str | None  # hex, when the target confirms MD5 only
    # The producer already sent it to the target as it was read (live upload);
    # the spooled copy is then only for a retry, if confirming it fails.
    streamed: bool = False


@dataclass(frozen=True)
class RingStats:
    overlap_bytes: int  # written while an upload was still reading the previous chunk
    producer_wait: float  # seconds the producer waited for the uploader (upload-bound)
    uploader_wait: float  # seconds the uploader waited for a whole chunk (stream-bound)


class Ring:
    """The shared spool. Producer: write(), seal(), end(). Uploader: take(), body(), release().

    Invariants (under one lock): chunks are sealed and taken in order, at most one
    sealed chunk at a time; while one is sealed the producer writes the next one
    only below the uploader's read position, and records how far it has
    overwritten (`clobbered`) before writing, so no read can see a torn byte.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self._spool = Spool(directory)
        self._fd = self._spool.file.fileno()
        self._cv = threading.Condition()
        self._sealed: Sealed | None = None
        self._taken = False
        self._rpos = 0  # the uploader needs nothing of the sealed chunk below this
        self._clobbered = 0  # bytes [0, clobbered) of the sealed chunk are overwritten
        self._wpos = 0  # the producer's offset in the chunk it is writing
        self._ended = False
        self._aborted: str | None = None
        self._overlap = 0
        self._waits = [0.0, 0.0]  # producer, uploader

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> RingStats:
        with self._cv:
            return RingStats(self._overlap, self._waits[0], self._waits[1])

    def _wait(self, ready: Callable[[], bool], who: int) -> None:
        """Wait (lock held) until ready(); RingAborted once abort() was called."""
        t = time.monotonic()
        while not ready():
            if self._aborted is not None:
                raise RingAborted(self._aborted)
            self._cv.wait()
        if self._aborted is not None:
            raise RingAborted(self._aborted)
        self._waits[who] += time.monotonic() - t

    def abort(self, why: str) -> None:
        """Wake both sides for good: every later wait, read or rewind raises RingAborted."""
        with self._cv:
            if self._aborted is None:
                self._aborted = why
            self._cv.notify_all()

    # -- producer side

    def _room(self) -> int:
        return sys.maxsize if self._sealed is None else self._rpos - self._wpos

    def write(self, data: memoryview) -> None:
        """Append to the chunk being written, blocking while that would overwrite
        bytes of the sealed chunk that its upload has not read yet."""
        done = 0
        while done < len(data):
            with self._cv:
                self._wait(lambda: self._room() > 0, 0)
                n = min(self._room(), len(data) - done)
                at = self._wpos
                self._wpos += n
                if self._sealed is not None:
                    self._clobbered = max(self._clobbered, self._wpos)
                    self._overlap += n
            _pwrite_all(self._fd, data[done:done + n], at)
            done += n

    def seal(self, chunk: Sealed) -> None:
        """The chunk just written is complete: hand it over once the previous one
        is released, then start the next chunk at offset 0."""
        with self._cv:
            self._wait(lambda: self._sealed is None, 0)
            self._sealed, self._taken = chunk, False
            self._rpos = self._clobbered = self._wpos = 0
            self._cv.notify_all()

    def end(self) -> None:
        """No more chunks: take() returns None once the last one is released."""
        with self._cv:
            self._ended = True
            self._cv.notify_all()

    # -- uploader side

    def take(self) -> Sealed | None:
        """The next sealed chunk (in order), or None after end()."""
        with self._cv:
            self._wait(lambda: (self._sealed is not None and not self._taken)
                       or (self._ended and self._sealed is None), 1)
            if self._sealed is None:
                return None
            self._taken = True
            return self._sealed

    def body(self) -> RingBody:
        """A file object over the taken chunk, for one upload (with its retries)."""
        with self._cv:
            assert self._sealed is not None and self._taken
            return RingBody(self, self._sealed.size)

    def skip_read(self) -> None:
        """The taken chunk needs no read (it went up live): the producer may overwrite
        it at once; a later body() rewind then raises BodyGone as usual."""
        with self._cv:
            assert self._sealed is not None and self._taken
            self._rpos = self._sealed.size
            self._cv.notify_all()

    def release(self) -> None:
        """The taken chunk is uploaded (or skipped): the producer may overwrite all of it."""
        with self._cv:
            self._sealed = None
            self._cv.notify_all()

    def _read(self, pos: int, n: int) -> bytes:
        with self._cv:
            self._check_rewind(pos)
        b = os.pread(self._fd, n, pos)
        with self._cv:
            self._rpos = pos + len(b)
            self._cv.notify_all()
        return b

    def _check_rewind(self, pos: int) -> None:
        if self._aborted is not None:
            raise RingAborted(self._aborted)
        if pos < self._clobbered:
            seq = self._sealed.seq if self._sealed else -1
            raise BodyGone(f"chunk {seq}: its upload must start over but bytes "
                           f"0..{self._clobbered} of its spooled copy already hold the "
                           "next chunk")

    def _seek(self, pos: int) -> None:
        with self._cv:
            self._check_rewind(pos)
            self._rpos = pos
            self._cv.notify_all()


class RingBody(io.RawIOBase):
    """The request body of one chunk upload: reads ahead 1 MiB at a time, and a
    rewind (a retry) raises BodyGone when the producer has overwritten the start."""

    def __init__(self, ring: Ring, size: int) -> None:
        super().__init__()
        self._ring, self._size = ring, size
        self._pos = 0  # logical position of the next byte handed out
        self._buf = b""
        self._buf_at = 0  # chunk offset of _buf[0]
        # Set when a rewind was refused: an HTTP stack may wrap the error in its
        # own, and the caller must still know the attempt failed for this reason.
        self.gone: BodyGone | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: pos, io.SEEK_CUR: self._pos + pos,
                  io.SEEK_END: self._size + pos}[whence]
        if not self._buf_at <= target <= self._buf_at + len(self._buf):
            try:
                self._ring._seek(min(max(target, 0), self._size))
            except BodyGone as e:
                self.gone = e
                raise
            self._buf, self._buf_at = b"", target
        self._pos = target
        return target

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        if left <= 0:
            return b""
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(READ_SIZE), b""))
        n = min(n, left)
        off = self._pos - self._buf_at
        if off >= len(self._buf):
            # Never more than READ_SIZE at once (a short read is allowed): memory
            # stays bounded whatever size a caller asks for.
            self._buf = self._ring._read(self._pos, min(READ_SIZE, left))
            self._buf_at, off = self._pos, 0
            if not self._buf:
                raise OSError(f"spooled chunk ends at {self._pos}, expected {self._size}")
        out = self._buf[off:off + n]
        self._pos += len(out)
        return out

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _pwrite_all(fd: int, data: memoryview, at: int) -> None:
    while data:
        n = os.pwrite(fd, data, at)
        data, at = data[n:], at + n


def produce(stream: IO[bytes], chunk_size: int, ring: Ring, *, want_md5: bool,
            live: LiveFeed | None = None) -> int:
    """Cut `stream` into chunks in the ring, hashing each as it is read (and sending
    it to the target as it is read, with `live`); returns how many. The last
    chunk may be shorter; an empty stream seals none."""
    write: Callable[[memoryview], object] = ring.write
    if live is not None:
        feed = live

        def write(part: memoryview) -> None:
            feed.write(part)  # first: the target's upload runs while we spool
            ring.write(part)

    seq = 0
    for size, sha, md5 in cut(stream, chunk_size, write, want_md5=want_md5):
        streamed = live.end_chunk(size) if live is not None else False
        ring.seal(Sealed(seq, size, sha, md5, streamed))
        seq += 1
    if live is not None:
        live.abort()  # the upload started ahead for a chunk that did not come
    return seq
