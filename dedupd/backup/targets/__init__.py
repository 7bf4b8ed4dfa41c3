"""Backup targets: one small interface, one implementation per kind of store.

Every target stores opaque objects under string keys ("job/chunks/ID/000003").
Implementations raise TargetError for permanent problems and Transient for
ones worth retrying; `retry.call` turns exhausted retries into a
TemporaryFailure (exit 75). The shared conformance suite in
tests/integration/test_backup_targets.py runs against each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Protocol

from dedupd.config import TargetConfig
from dedupd.errors import EXIT_CONFIG, DedupdError

COLD_CLASSES = ("GLACIER", "DEEP_ARCHIVE")


class TargetError(DedupdError):
    """A permanent target problem (access denied, no such bucket, bad request)."""


class NoCredentials(TargetError):
    """The store's credentials are missing or incomplete: configuration (exit 78)."""

    exit_code = EXIT_CONFIG


class Transient(DedupdError):
    """A problem worth retrying (connection refused, 5xx, throttling, timeout)."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None  # hex, as the store reports it (metadata or native checksum)
    md5: str | None  # hex, when the store knows it (rclone remotes)
    storage_class: str
    # "none": readable now; "needed": cold, not requested; "in-progress": thawing;
    # "available": a restored copy is readable now.
    restore: str = "none"

    @property
    def readable(self) -> bool:
        return self.restore in ("none", "available")


class Target(Protocol):
    """What the backup path needs from a store. Keys never start with '/'."""

    description: str

    @property
    def wants_md5(self) -> bool:
        """True when head() can confirm MD5 only (not SHA-256)."""

    def put(self, key: str, file: IO[bytes], size: int, sha256: str, md5: str | None,
            storage_class: str) -> None:
        """Store `size` bytes read from `file` (positioned at 0) as one object."""

    def head(self, key: str) -> ObjectInfo | None:
        """Size, checksum and storage state of one object; None when absent."""

    def get(self, key: str, out: IO[bytes]) -> None:
        """Write the object's bytes to `out`. TargetError if it is cold and not restored."""

    def list(self, prefix: str, checksums: bool = False) -> list[ObjectInfo]:
        """Objects whose key starts with `prefix` (a folder ending in '/').

        With checksums=True each entry carries what head() would report (size,
        sha256 or md5), in as few requests as the store allows.
        """

    def delete(self, key: str) -> None:
        """Idempotent: deleting an absent object is not an error."""

    def delete_folder(self, folder: str) -> None:
        """Delete every object whose key starts with `folder` (ending in '/'), in as
        few requests as the store allows. Idempotent."""

    def restore_request(self, key: str, days: int) -> None:
        """Ask a cold store to make the object readable for `days` (idempotent)."""


class LivePut(Protocol):
    """One object uploaded while its bytes are produced (targets that can: rclone).

    Best effort: finish() returns False when anything went wrong, and the caller
    then uploads the object again with put() from its own copy. A True means the
    store accepted the bytes, not that they are confirmed: head() says that.
    """

    # True when a body shorter than the size given to begin_put is stored as an
    # object of its own length (rclone's local remote); else such a body fails.
    takes_short: bool

    def write(self, data: memoryview) -> None: ...

    def finish(self) -> bool: ...

    def abort(self) -> None: ...


def begin_put(target: Target, key: str, size: int, storage_class: str) -> LivePut | None:
    """A streamed upload of exactly `size` bytes under key, or None when the target
    only uploads from a file it can re-read (S3 here: its body must be seekable
    for the SDK's retries and checksum)."""
    start = getattr(target, "begin_put", None)
    if start is None:
        return None
    live: LivePut | None = start(key, size, storage_class)
    return live


def confirmed(info: ObjectInfo | None, size: int, sha256: str, md5: str | None) -> bool:
    """True when the store shows exactly this object: same size and a matching checksum.

    A store that reports no usable checksum never confirms (the chunk is then
    uploaded again rather than trusted blindly).
    """
    if info is None or info.size != size:
        return False
    if info.sha256 is not None:
        return info.sha256 == sha256
    return md5 is not None and info.md5 is not None and info.md5 == md5


def check_folder(folder: str) -> None:
    """delete_folder's guard: never the whole target, never a key mistaken for a folder."""
    if not folder.strip("/") or not folder.endswith("/") or folder.startswith("/"):
        raise TargetError(f"refusing to delete folder {folder!r}: not a sub-folder")


def make_target(cfg: TargetConfig) -> Target:
    """The configured store, every request wrapped in retries with backoff."""
    from dedupd.backup.targets.retry import RetryingTarget

    inner: Target
    if cfg.kind == "s3":
        from dedupd.backup.targets.s3 import S3Target
        inner = S3Target(cfg)
    elif cfg.kind == "rclone":
        from dedupd.backup.targets.rclone import RcloneTarget
        inner = RcloneTarget(cfg)
    else:
        raise TargetError(f"unknown target kind {cfg.kind!r}")
    return RetryingTarget(inner, cfg)
