"""Compression stage: a subprocess (zstd, gzip, pigz) fed by the send stream.

Compressors run as their own processes so compression uses another core and
the Python process only hashes and uploads. Outputs are deterministic for a
given input (gzip/pigz with -n: no name or timestamp in the header), which is
what lets a resumed backup compare a regenerated stream chunk by chunk.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import subprocess
from collections.abc import Sequence
from typing import IO

from dedupd import proc
from dedupd.errors import DedupdError

SUFFIX = {"zstd": ".zst", "gzip": ".gz", "pigz": ".gz", "none": ""}


def compress_argv(kind: str, level: int) -> list[str] | None:
    """The compressor command, None for `none`. zstd levels go to 19, gzip to 9."""
    if kind == "zstd":
        return ["zstd", "-q", "-c", f"-{min(level, 19)}"]
    if kind == "gzip":
        return ["gzip", "-n", "-c", f"-{min(level, 9)}"]
    if kind == "pigz":
        return ["pigz", "-n", "-c", f"-{min(level, 9)}"]
    if kind == "none":
        return None
    raise DedupdError(f"unknown compression {kind!r}")


def decompress_argv(kind: str) -> list[str] | None:
    if kind == "zstd":
        return ["zstd", "-q", "-d", "-c"]
    if kind in ("gzip", "pigz"):
        return ["gzip", "-d", "-c"]
    if kind == "none":
        return None
    raise DedupdError(f"unknown compression {kind!r}")


class Pipeline:
    """`first | second | ...` started through proc.spawn, read from `stdout`.

    close() waits for every stage and raises the first stage's ProcError, so a
    failing `zfs send` is reported as itself and not as the compressor's EOF.
    """

    def __init__(self, stages: Sequence[Sequence[str]], stdin: IO[bytes] | int | None = None
                 ) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        src: IO[bytes] | int | None = stdin
        try:
            for i, argv in enumerate(stages):
                p = proc.spawn(argv, stdin=src)
                widen_pipe(p.stdout)
                if i > 0 and isinstance(src, io.IOBase):
                    # The next stage owns the read end now; our copy would keep
                    # the writer from seeing EPIPE if that reader dies.
                    src.close()
                self.procs.append(p)
                src = p.stdout
        except BaseException:
            self.kill()
            raise
        out = self.procs[-1].stdout
        assert out is not None
        self.stdout: IO[bytes] = out

    def signal_kill(self) -> None:
        """SIGKILL every stage still running, without waiting: safe from another
        thread, it makes a reader blocked on `stdout` see EOF at once."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()

    def kill(self) -> None:
        self.signal_kill()
        for p in self.procs:
            p.wait()
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()

    def close(self, timeout: float | None = proc.DEFAULT_TIMEOUT) -> None:
        """Wait for all stages; raise the earliest failure."""
        self.stdout.close()
        errors: list[proc.ProcError] = []
        for p in self.procs:
            try:
                proc.check_exit(p, timeout)
            except proc.ProcError as e:
                errors.append(e)
            finally:
                if p.stderr is not None:
                    p.stderr.close()
        if errors:
            raise errors[0]


PIPE_SIZE = 1024 * 1024


def widen_pipe(f: IO[bytes] | None) -> None:
    """Grow a pipe to 1 MiB (from 64 KiB) so stages block on each other less often."""
    if f is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def send_pipeline(send_argv: Sequence[str], kind: str, level: int) -> Pipeline:
    comp = compress_argv(kind, level)
    return Pipeline([list(send_argv)] + ([comp] if comp else []))
