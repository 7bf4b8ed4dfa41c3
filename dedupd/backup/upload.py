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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dedupd.backup import compress, send
from dedupd.backup import manifest as mf
from dedupd.backup.chunker import Chunk, Spool, chunks
from dedupd.backup.manifest import ChunkRef
from dedupd.backup.targets import Target, TargetError, confirmed
from dedupd.errors import DedupdError

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


@dataclass(frozen=True)
class Uploaded:
    chunks: tuple[ChunkRef, ...]
    md5s: tuple[str | None, ...]  # per chunk, when the target confirms MD5 only
    uploaded: int
    skipped: int
    upload_seconds: float  # time spent in target requests (the rest is the stream)

    @property
    def total_size(self) -> int:
        return sum(c.size for c in self.chunks)


def upload_stream(target: Target, plan: UploadPlan,
                  after_chunk: Callable[[int], None] | None = None) -> Uploaded:
    """Stream, chunk and upload; return the chunk list. Raises on any stage's failure."""
    pipe = compress.send_pipeline(plan.spec.argv(), plan.compression, plan.level)
    refs: list[ChunkRef] = []
    md5s: list[str | None] = []
    uploaded = skipped = 0
    in_target = 0.0
    kill_at = os.environ.get(KILL_AFTER_CHUNK_ENV)
    try:
        with Spool(plan.spool_dir) as sp:
            for c in chunks(pipe.stdout, plan.chunk_size, sp, want_md5=target.wants_md5):
                key = mf.chunk_key(plan.job, plan.backup_id, c.seq, plan.compression)
                t = time.monotonic()
                if _put_unless_present(target, plan, key, c):
                    uploaded += 1
                else:
                    skipped += 1
                in_target += time.monotonic() - t
                refs.append(ChunkRef(key, c.size, c.sha256))
                md5s.append(c.md5)
                if kill_at is not None and int(kill_at) == c.seq:
                    os.kill(os.getpid(), signal.SIGKILL)
                if after_chunk is not None:
                    after_chunk(c.seq)
    except BaseException:
        pipe.kill()
        raise
    pipe.close()
    return Uploaded(tuple(refs), tuple(md5s), uploaded, skipped, in_target)


def _put_unless_present(target: Target, plan: UploadPlan, key: str, c: Chunk) -> bool:
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
    target.put(key, c.file, c.size, c.sha256, c.md5, plan.storage_class)
    return True


def confirm_all(target: Target, up: Uploaded, folder: str) -> list[str]:
    """Check every chunk on the target (size and checksum as uploaded) with one
    checksummed listing of the backup's folder; TargetError if any is off, so no
    manifest is written. Returns the keys in the folder the manifest will not
    list (strays of a longer earlier attempt) for the caller to delete."""
    found = {o.key: o for o in target.list(folder, checksums=True)}
    for r, md5 in zip(up.chunks, up.md5s, strict=True):
        info = found.pop(r.key, None)
        if info is None:
            raise TargetError(f"{r.key}: uploaded but not found on the target")
        if not confirmed(info, r.size, r.sha256, md5):
            raise TargetError(f"{r.key}: the target holds {info.size} bytes / sha256 "
                              f"{info.sha256} / md5 {info.md5}, expected {r.size} / "
                              f"{r.sha256}")
    return sorted(found)


def delete_prefix(target: Target, prefix: str) -> int:
    """Delete every object under prefix; returns how many. Best effort is up to the caller."""
    objs = target.list(prefix)
    for o in objs:
        target.delete(o.key)
    return len(objs)
