"""Retries with exponential backoff around one target request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import IO, TypeVar

from dedupd.backup.targets import LivePut, ObjectInfo, Target, Transient, begin_put
from dedupd.config import TargetConfig
from dedupd.errors import TemporaryFailure

T = TypeVar("T")
log = logging.getLogger("dedupd.backup")


def call(what: str, fn: Callable[[], T], cfg: TargetConfig, clock: list[float] | None = None
         ) -> T:
    """Run fn; on Transient wait base*2^n (capped) and try again, `cfg.retries` tries in all.

    Exhausted retries raise TemporaryFailure (exit 75: the store may come back);
    permanent errors (TargetError) pass through at once.
    """
    t0 = time.monotonic()
    try:
        return _attempts(what, fn, cfg)
    finally:
        if clock is not None:
            clock[0] += time.monotonic() - t0


def _attempts(what: str, fn: Callable[[], T], cfg: TargetConfig) -> T:
    delay = cfg.retry_base_seconds
    for attempt in range(1, cfg.retries + 1):
        try:
            return fn()
        except Transient as e:
            if attempt == cfg.retries:
                raise TemporaryFailure(
                    f"{what}: {e} (gave up after {cfg.retries} attempts)") from None
            log.warning("%s: %s; retry %d/%d in %.1fs", what, e, attempt, cfg.retries - 1,
                        delay)
            time.sleep(delay)
            delay = min(delay * 2, cfg.retry_max_seconds)
    raise AssertionError("unreachable")


class RetryingTarget:
    """Wraps a Target so every request is retried per the target's config."""

    def __init__(self, inner: Target, cfg: TargetConfig) -> None:
        self.inner, self.cfg = inner, cfg
        self.description = inner.description
        self.clock = [0.0]  # seconds spent in requests to the store, retries included

    @property
    def busy_seconds(self) -> float:
        return self.clock[0]

    @property
    def wants_md5(self) -> bool:
        return self.inner.wants_md5

    def put(self, key: str, file: IO[bytes], size: int, sha256: str, md5: str | None,
            storage_class: str) -> None:
        def attempt() -> None:
            file.seek(0)  # a failed attempt may have read part of the body
            self.inner.put(key, file, size, sha256, md5, storage_class)
        call(f"upload {key}", attempt, self.cfg, self.clock)

    def begin_put(self, key: str, size: int, storage_class: str) -> LivePut | None:
        """The inner target's streamed upload, not retried: a failed one is
        uploaded again through put(), which is."""
        return begin_put(self.inner, key, size, storage_class)

    def head(self, key: str) -> ObjectInfo | None:
        return call(f"head {key}", lambda: self.inner.head(key), self.cfg, self.clock)

    def get(self, key: str, out: IO[bytes]) -> None:
        def attempt() -> None:
            out.seek(0)
            out.truncate()
            self.inner.get(key, out)
        call(f"download {key}", attempt, self.cfg, self.clock)

    def list(self, prefix: str, checksums: bool = False) -> list[ObjectInfo]:
        return call(f"list {prefix}", lambda: self.inner.list(prefix, checksums), self.cfg,
                    self.clock)

    def delete(self, key: str) -> None:
        call(f"delete {key}", lambda: self.inner.delete(key), self.cfg, self.clock)

    def delete_folder(self, folder: str) -> None:
        call(f"delete {folder}", lambda: self.inner.delete_folder(folder), self.cfg,
             self.clock)

    def restore_request(self, key: str, days: int) -> None:
        call(f"restore request {key}", lambda: self.inner.restore_request(key, days),
             self.cfg, self.clock)
