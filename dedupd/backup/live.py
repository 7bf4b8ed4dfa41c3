"""Live uploads: each full-size chunk goes to the target while the stream is read.

The producer hands every piece of the stream to the spool (ring.py) and, for a
target that can take a streamed body (rclone), to an upload of the current
chunk started with the chunk's size. Nothing is read back from the spool on
that path. The spooled copy stays the retry copy: a live upload that fails, or
whose object the uploader cannot confirm by HEAD, is put again from the spool
(or, once the spool was overwritten, by regenerating the stream, as for any
failed upload). Only chunks of exactly chunk_size are sent live where the size
must be declared up front (one PUT, never multipart): there the last, shorter
chunk of a stream is uploaded from the spool. A target whose live upload takes
a shorter body (`takes_short`: rclone's local remote) gets that one live too.

A resumed pass never streams: each chunk must be compared by HEAD before any
byte of it is sent, so a confirmed chunk is never uploaded twice.

Each upload is started ahead: starting `rclone rcat` takes ~50 ms (and ~50
ms of CPU) before it reads its first byte, and the stream (zfs send and the
compressor behind it) stood still that long at every chunk. The first chunk's
is started with the feed, before the stream's processes; the next chunk's
once half of the current one is fed, so a stream whose last chunk is short
starts no upload for a chunk that never comes. One started for a chunk that
never comes (the stream ended, or was empty) is aborted; a store that kept
something of it (an empty object) has it deleted as a stray by the final
listing (upload.confirm_all) before the manifest is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dedupd.backup.targets import LivePut, Target, begin_put

log = logging.getLogger("dedupd.backup")


class LiveFeed:
    """The producer's side: write() each piece, end_chunk() when a chunk is cut."""

    def __init__(self, target: Target, key_of: Callable[[int], str], chunk_size: int,
                 storage_class: str) -> None:
        self._target, self._key_of = target, key_of
        self._size, self._class = chunk_size, storage_class
        self._seq = 0
        self._live: LivePut | None = None
        self._fed = 0  # bytes of the current chunk written to its live upload
        self._on = True  # False once the target turned out to have no live uploads
        self.streamed = 0  # chunks whose live upload was accepted by the target
        self.fallbacks = 0  # full-size chunks whose live upload failed
        # started for chunk _seq + 1 (for chunk 0: now), not fed yet
        self._next: LivePut | None = self._begin(0)

    def write(self, part: memoryview) -> None:
        if self._live is None and self._on:
            self._live, self._next = self._next or self._begin(self._seq), None
            self._on = self._live is not None
            self._fed = 0
        if self._live is not None:
            self._live.write(part)
            self._fed += len(part)
            if self._next is None and self._fed >= self._size // 2:
                self._next = self._begin(self._seq + 1)

    def _begin(self, seq: int) -> LivePut | None:
        return begin_put(self._target, self._key_of(seq), self._size, self._class)

    def end_chunk(self, size: int) -> bool:
        """The chunk just cut had `size` bytes: True when its live upload was stored."""
        live, self._live = self._live, None
        seq, self._seq = self._seq, self._seq + 1
        if live is None:
            return False
        if size != self._size and not live.takes_short:
            live.abort()  # the stream's last chunk: its declared size was wrong
            return False
        if live.finish():
            self.streamed += 1
            return True
        self.fallbacks += 1
        log.info("chunk %d: the live upload failed; uploading it from the spooled copy", seq)
        return False

    def abort(self) -> None:
        """Stop the uploads in flight or started ahead (the stream ended, failed, or
        the pass is given up); waits until they are gone."""
        for live in (self._live, self._next):
            if live is not None:
                live.abort()
        self._live = self._next = None
