"""Cut a stream into fixed-size chunks, one at a time, hashing each.

Memory: one read buffer (1 MiB). Disk: one spooled chunk, rewritten in place
for the next one, so temporary space never exceeds chunk_size and nothing is
ever proportional to the whole stream.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    """One chunk, spooled in `file` (positioned at 0) until the next one is read."""

    seq: int
    size: int
    sha256: str  # hex
    md5: str | None  # hex, when asked for: some remotes (rclone on S3) only know MD5
    file: IO[bytes]


class Spool:
    """An anonymous temp file (unlinked at once: nothing to clean after kill -9)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115 (closed by close())
            prefix="dedupd-chunk-", dir=None if directory is None else str(directory))

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def cut(stream: IO[bytes], chunk_size: int, write: Callable[[memoryview], object], *,
        want_md5: bool = False, begin: Callable[[], object] | None = None
        ) -> Iterator[tuple[int, str, str | None]]:
    """Read `stream` a chunk at a time: every piece goes to write() and into the
    chunk's digests; (size, sha256 hex, md5 hex or None) is yielded as each chunk
    ends. begin() runs before a chunk's first piece. An empty stream yields
    nothing; the last chunk may be shorter. Memory: one READ_SIZE buffer."""
    buf = bytearray(min(READ_SIZE, chunk_size))
    view = memoryview(buf)
    while True:
        if begin is not None:
            begin()
        sha = hashlib.sha256()
        md5 = hashlib.md5(usedforsecurity=False) if want_md5 else None
        size = 0
        while size < chunk_size:
            n = stream.readinto(view[: min(len(buf), chunk_size - size)])  # type: ignore[attr-defined]
            if not n:
                break
            part = view[:n]
            sha.update(part)
            if md5 is not None:
                md5.update(part)
            write(part)
            size += n
        if size == 0:
            return
        yield size, sha.hexdigest(), md5.hexdigest() if md5 else None
        if size < chunk_size:
            return


def chunks(stream: IO[bytes], chunk_size: int, spool: Spool, *, want_md5: bool = False
           ) -> Iterator[Chunk]:
    """Yield the chunks of `stream` in order, each spooled alone (the file rewritten
    in place); each is valid until the next is requested."""
    f = spool.file

    def rewind() -> None:
        f.seek(0)
        f.truncate()

    for seq, (size, sha, md5) in enumerate(cut(stream, chunk_size, f.write,
                                               want_md5=want_md5, begin=rewind)):
        f.flush()
        f.seek(0)
        yield Chunk(seq, size, sha, md5, f)


def file_digests(f: IO[bytes]) -> tuple[int, str]:
    """(size, sha256 hex) of a file object from its current position to EOF."""
    h = hashlib.sha256()
    size = 0
    while True:
        b = f.read(READ_SIZE)
        if not b:
            return size, h.hexdigest()
        h.update(b)
        size += len(b)

