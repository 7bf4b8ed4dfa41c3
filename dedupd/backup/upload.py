"""Upload one snapshot's stream: send | compress | chunk -> one object per chunk.

Resume rule: a chunk whose object already exists with the same size and
checksum is not uploaded again. An object of the same size but a different
checksum means the regenerated stream differs from the one uploaded before
(StreamChanged): the caller restarts under a new backup id. An object of a
different size is an incomplete upload (some remotes write in place) and is
simply replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, cast

from dedupd.backup import compress, send
from dedupd.backup import manifest as mf
from dedupd.backup.live import LiveFeed
from dedupd.backup.manifest import ChunkRef
from dedupd.backup.ring import BodyGone, Ring, RingAborted, RingStats, Sealed, produce
from dedupd.backup.targets import ObjectInfo, Target, TargetError, confirmed
from dedupd.errors import DedupdError, TemporaryFailure

log = logging.getLogger("dedupd.backup")

# Test-only hook (documented in docs/backup-layout.md, never set in production):
# SIGKILL this process right after chunk number N (0-based) has been uploaded,
# before anything else records it, to prove resume after kill -9.
KILL_AFTER_CHUNK_ENV = "DEDUPD_TEST_KILL_AFTER_CHUNK"


class StreamChanged(DedupdError):
    """The regenerated stream differs from the chunks uploaded by an earlier attempt."""


@dataclass(frozen=True)
class UploadPlan:
    job: str
    backup_id: str
    spec: send.SendSpec
    compression: str
    level: int
    chunk_size: int
    storage_class: str
    spool_dir: Path | None
    resuming: bool  # objects of this id may exist already: HEAD before each PUT
    restarts: int = 3  # stream regenerations allowed when a retry finds its body gone


@dataclass(frozen=True)
class Uploaded:
    chunks: tuple[ChunkRef, ...]
    md5s: tuple[str | None, ...]  # per chunk, when the target confirms MD5 only
    uploaded: int
    skipped: int
    upload_seconds: float  # time spent in target requests (the rest is the stream)
    stats: RingStats = RingStats(0, 0.0, 0.0)
    restarts: int = 0  # times the stream was regenerated after a failed upload
    seconds: float = 0.0  # wall time of upload_stream: the stream and its uploads
    streamed: int = 0  # chunks sent live, as the stream was read (live.py)

    @property
    def total_size(self) -> int:
        return sum(c.size for c in self.chunks)


def upload_stream(target: Target, plan: UploadPlan,
                  after_chunk: Callable[[int], None] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Uploaded:
    """Stream, chunk and upload; return the chunk list. Raises on any stage's failure.

    The stream is produced in this thread while one uploader thread sends the
    previous chunk (ring.py). When a chunk's upload failed after its spooled
    bytes were reused, the whole stream is regenerated and resumed (HEAD skips
    what is confirmed), up to plan.restarts times, then TemporaryFailure.
    progress(1, size) is called (in the uploader thread) after each chunk is
    uploaded or found already there.
    """
    done = 0  # chunks PUT by passes that later had to start over
    t0 = time.monotonic()
    for attempt in range(plan.restarts + 1):
        p = plan if attempt == 0 else replace(plan, resuming=True)
        try:
            up = _one_pass(target, p, after_chunk, progress)
        except _PassLost as e:
            done += e.uploaded
            if attempt == plan.restarts:
                raise TemporaryFailure(f"{e.cause} (gave up after {attempt} stream "
                                       "restarts)") from None
            log.warning("%s; regenerating the stream (restart %d/%d), confirmed chunks "
                        "are not sent again", e.cause, attempt + 1, plan.restarts)
            continue
        return replace(up, uploaded=up.uploaded + done, skipped=up.skipped - done,
                       restarts=attempt, seconds=time.monotonic() - t0)
    raise AssertionError("unreachable")


class _PassLost(Exception):
    """One pass ended with BodyGone: `uploaded` chunks went up before it."""

    def __init__(self, cause: BodyGone, uploaded: int) -> None:
        super().__init__(str(cause))
        self.cause, self.uploaded = cause, uploaded


def _one_pass(target: Target, plan: UploadPlan, after_chunk: Callable[[int], None] | None,
              progress: Callable[[int, int], None] | None) -> Uploaded:
    # The first chunk's live upload before the stream: it starts (~50 ms for
    # `rclone rcat`) while zfs send and the compressor start.
    live = None if plan.resuming else LiveFeed(
        target, lambda seq: mf.chunk_key(plan.job, plan.backup_id, seq, plan.compression),
        plan.chunk_size, plan.storage_class)
    try:
        pipe = compress.send_pipeline(plan.spec.argv(), plan.compression, plan.level)
    except BaseException:
        if live is not None:
            live.abort()
        raise
    with Ring(plan.spool_dir) as ring:
        up = _Uploader(target, plan, ring, after_chunk, pipe.signal_kill, progress)
        thread = threading.Thread(target=up.run, name=f"dedupd-upload-{plan.backup_id}",
                                  daemon=True)
        thread.start()
        try:
            produce(pipe.stdout, plan.chunk_size, ring, want_md5=target.wants_md5,
                    live=live)
            pipe.close()
            ring.end()
        except BaseException as e:
            ring.abort(f"the stream stopped: {e or type(e).__name__}")
            if live is not None:
                live.abort()
            pipe.kill()
            thread.join()
            if isinstance(e, Exception) and up.error is not None and not isinstance(
                    up.error, RingAborted):
                # The upload failed first (and stopped the stream): report that,
                # not the stream's reaction to it.
                raise _lost_or(up) from None
            raise
        thread.join()
        if up.error is not None:
            raise _lost_or(up)
        return Uploaded(tuple(up.refs), tuple(up.md5s), up.uploaded, up.skipped,
                        up.seconds, ring.stats,
                        streamed=0 if live is None else live.streamed)


def _lost_or(up: _Uploader) -> BaseException:
    assert up.error is not None
    if isinstance(up.error, BodyGone):
        return _PassLost(up.error, up.uploaded)
    return up.error


class _Uploader:
    """The uploader thread: takes sealed chunks in order and puts each one."""

    def __init__(self, target: Target, plan: UploadPlan, ring: Ring,
                 after_chunk: Callable[[int], None] | None,
                 stop_stream: Callable[[], None],
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.target, self.plan, self.ring, self.after_chunk = target, plan, ring, after_chunk
        self.progress = progress
        self.stop_stream = stop_stream
        self.refs: list[ChunkRef] = []
        self.md5s: list[str | None] = []
        self.uploaded = self.skipped = 0
        self.seconds = 0.0
        self.error: BaseException | None = None
        kill_at = os.environ.get(KILL_AFTER_CHUNK_ENV)
        self.kill_at = None if kill_at is None else int(kill_at)

    def run(self) -> None:
        try:
            while (c := self.ring.take()) is not None:
                self._one(c)
                self.ring.release()
        except BaseException as e:  # handed to the producer's thread, which raises it
            self.error = e
            self.ring.abort(f"upload failed: {e or type(e).__name__}")
            # The producer may be blocked reading a slow `zfs send`: end the stream
            # so it notices now (it reaps the processes itself).
            self.stop_stream()

    def _one(self, c: Sealed) -> None:
        key = mf.chunk_key(self.plan.job, self.plan.backup_id, c.seq, self.plan.compression)
        t = time.monotonic()
        live_ok = c.streamed and _confirm_streamed(self.target, self.plan, key, c, self.ring)
        if live_ok or _put_unless_present(self.target, self.plan, key, c, self.ring):
            self.uploaded += 1
        else:
            self.skipped += 1
        self.seconds += time.monotonic() - t
        self.refs.append(ChunkRef(key, c.size, c.sha256))
        self.md5s.append(c.md5)
        if self.kill_at == c.seq:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.progress is not None:
            self.progress(1, c.size)
        if self.after_chunk is not None:
            self.after_chunk(c.seq)


def _confirm_streamed(target: Target, plan: UploadPlan, key: str, c: Sealed,
                      ring: Ring) -> bool:
    """A chunk the producer sent live: confirm it by HEAD like any upload. The
    spool is not read for it, so the producer may overwrite it at once; if the
    object is not confirmed, the caller puts it again (from the spool while
    that still holds it, else the stream is regenerated)."""
    ring.skip_read()
    info = target.head(key)
    if confirmed(info, c.size, c.sha256, c.md5):
        return True
    log.warning("%s: %s", plan.backup_id, _mismatch(key, info, c.size, c.sha256))
    return False


def _put_unless_present(target: Target, plan: UploadPlan, key: str, c: Sealed,
                        ring: Ring) -> bool:
    """Upload chunk c under key unless the very same object is already there."""
    if plan.resuming:
        info = target.head(key)
        if confirmed(info, c.size, c.sha256, c.md5):
            log.info("%s: chunk %d already uploaded, not sending it again", plan.backup_id,
                     c.seq)
            return False
        if info is not None and info.size == c.size:
            raise StreamChanged(f"{plan.backup_id}: chunk {c.seq} differs from the one "
                                "uploaded before")
    # A RingBody offers the read/seek/tell a target uses on a file (no fileno).
    body = ring.body()
    try:
        target.put(key, cast(IO[bytes], body), c.size, c.sha256, c.md5, plan.storage_class)
    except Exception as e:
        if body.gone is not None:  # whatever the HTTP stack made of it
            raise body.gone from e
        raise
    # Confirm now, in the uploader thread: on a local remote this re-reads and
    # hashes the object, work that overlaps the stream here instead of
    # following it. confirm_all() then only checks that all are still there.
    info = target.head(key)
    if not confirmed(info, c.size, c.sha256, c.md5):
        raise TargetError(_mismatch(key, info, c.size, c.sha256))
    return True


def _mismatch(key: str, info: ObjectInfo | None, size: int, sha256: str) -> str:
    if info is None:
        return f"{key}: uploaded but not found on the target"
    return (f"{key}: the target holds {info.size} bytes / sha256 {info.sha256} / md5 "
            f"{info.md5}, expected {size} / {sha256}")


def confirm_all(target: Target, up: Uploaded, folder: str) -> list[str]:
    """Check that every chunk is on the target with its size, with one listing of
    the backup's folder (each chunk's checksum was confirmed by HEAD right after
    its upload or before it was skipped); TargetError if any is off, so no
    manifest is written. Returns the keys in the folder the manifest will not
    list (strays of a longer earlier attempt) for the caller to delete."""
    found = {o.key: o for o in target.list(folder)}
    for r in up.chunks:
        info = found.pop(r.key, None)
        if info is None or info.size != r.size:
            raise TargetError(_mismatch(r.key, info, r.size, r.sha256))
    return sorted(found)


def delete_prefix(target: Target, prefix: str) -> None:
    """Delete every object under prefix (a folder ending in '/'). Best effort is up to
    the caller."""
    target.delete_folder(prefix)
