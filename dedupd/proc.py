"""The only place that starts subprocesses.

argv lists only (never a shell), a timeout on everything, stderr captured into a
typed error so callers can say what failed and why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from dedupd.errors import DedupdError

Arg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
DEFAULT_TIMEOUT = 600.0


class ProcError(DedupdError):
    """A command failed to start, timed out, or exited non-zero."""

    def __init__(self, argv: Sequence[Arg], returncode: int | None, stderr: str) -> None:
        self.argv = [os.fsdecode(a) for a in argv]
        self.returncode = returncode
        self.stderr = stderr.strip()
        what = "timed out" if returncode is None else f"exited {returncode}"
        detail = f": {self.stderr.splitlines()[-1]}" if self.stderr else ""
        super().__init__(f"{self.argv[0]} {what}{detail}")


class MissingTool(ProcError):
    def __init__(self, tool: str) -> None:
        DedupdError.__init__(self, f"{tool}: not installed or not on PATH")
        self.argv = [tool]
        self.returncode = 127
        self.stderr = ""


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "surrogateescape")


def which(tool: str) -> str | None:
    return shutil.which(tool)


def run(
    argv: Sequence[Arg],
    *,
    input: bytes | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    umask: int = -1,
) -> Result:
    """Run a command to completion and capture its output.

    Raises MissingTool if the program does not exist, ProcError on timeout or
    (with check=True) a non-zero exit. umask: the child's (-1: ours).
    """
    args = [os.fspath(a) for a in argv]
    full_env = {**os.environ, **env} if env else None
    try:
        cp = subprocess.run(
            args, input=input, capture_output=True, timeout=timeout,
            env=full_env, cwd=cwd, check=False, umask=umask,
        )
    except FileNotFoundError:
        raise MissingTool(os.fsdecode(args[0])) from None
    except subprocess.TimeoutExpired as e:
        raise ProcError(args, None, _decode(e.stderr)) from None
    stderr = _decode(cp.stderr)
    if check and cp.returncode != 0:
        raise ProcError(args, cp.returncode, stderr)
    return Result(tuple(os.fsdecode(a) for a in args), cp.returncode, cp.stdout, stderr)


def spawn(
    argv: Sequence[Arg],
    *,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    umask: int = -1,
) -> subprocess.Popen[bytes]:
    """Start a long-running command for streaming (pipelines); stderr is piped.

    The caller owns the process: it must read stdout, wait() it and call
    check_exit() so a failure is raised as a ProcError.
    """
    args = [os.fspath(a) for a in argv]
    full_env = {**os.environ, **env} if env else None
    try:
        return subprocess.Popen(
            args, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=full_env,
            umask=umask,
        )
    except FileNotFoundError:
        raise MissingTool(os.fsdecode(args[0])) from None


def check_exit(p: subprocess.Popen[bytes], timeout: float | None = DEFAULT_TIMEOUT) -> None:
    """Wait for a spawned process and raise ProcError if it failed."""
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise ProcError(list(p.args), None, "") from None  # type: ignore[arg-type]
    err = _decode(p.stderr.read()) if p.stderr else ""
    if rc != 0:
        raise ProcError(list(p.args), rc, err)  # type: ignore[arg-type]


def _decode(b: bytes | str | None) -> str:
    if b is None:
        return ""
    if isinstance(b, str):
        return b
    return b.decode("utf-8", "replace")
