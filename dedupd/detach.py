"""`dedupd run --detach`: a classic background daemon (python-daemon), for hosts without systemd.

The parent does not exit until the daemon is ready or has failed: it listens
on a private sd_notify socket and waits for READY=1 (exit 0) or the daemon's
STATUS=/EXIT_STATUS= failure report (exit with that status), so a config error
is still printed on the terminal that started it, not lost in a log file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dedupd.errors import EXIT_FAILURE, DedupdError, one_line
from dedupd.fsops.single import NotSingle, open_single

READY_TIMEOUT = 120.0


def run_detached(body: Callable[[], int], log_file: Path, timeout: float = READY_TIMEOUT) -> int:
    """Fork a detached daemon running body(); return once it reports ready or failed."""
    tmp = tempfile.mkdtemp(prefix="dedupd-detach-")
    addr = os.path.join(tmp, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(addr)
        logf = _open_log(log_file)  # before the fork: said here, not in the daemon's log
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(body, addr, logf)
        logf.close()
        os.waitpid(pid, 0)  # the first fork exits as soon as python-daemon detached
        return _await_ready(sock, timeout, log_file)
    finally:
        sock.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _open_log(log_file: Path) -> BinaryIO:
    """The log file, opened to append as root writes it: never through a symlink, a
    FIFO or another name of some other file (another user may write its directory),
    only a regular file of ours with this one name (made 0640 when missing)."""
    try:
        fd = open_single(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640,
                         uid=os.geteuid())
    except NotSingle:
        raise DedupdError(f"cannot open the log file {log_file}: not a regular file of this "
                          "user with one name (put there by someone else? remove it)") from None
    except OSError as e:
        raise DedupdError(f"cannot open the log file {log_file}: {e.strerror or e}") from None
    return os.fdopen(fd, "ab", buffering=0)


def _child(body: Callable[[], int], addr: str, logf: object) -> None:
    import daemon as pydaemon  # python-daemon

    rc = EXIT_FAILURE
    try:
        os.environ["NOTIFY_SOCKET"] = addr
        for k in ("WATCHDOG_USEC", "WATCHDOG_PID"):  # not ours: systemd does not watch us
            os.environ.pop(k, None)
        with pydaemon.DaemonContext(working_directory="/", umask=0o022, stdout=logf,
                                    stderr=logf, detach_process=True):
            rc = body()
    finally:
        os._exit(rc)


def _await_ready(sock: socket.socket, timeout: float, log_file: Path) -> int:
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(4096).decode("utf-8", "replace")
        except TimeoutError:
            sys.stderr.write(f"dedupd: the daemon did not report ready within {timeout:.0f}s; "
                             f"see {log_file}\n")
            return EXIT_FAILURE
        fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        if fields.get("READY") == "1":
            return 0
        if "EXIT_STATUS" in fields:
            sys.stderr.write(f"dedupd: {one_line(fields.get('STATUS', 'failed'))} "
                             f"(see {log_file})\n")
            with contextlib.suppress(ValueError):
                return int(fields["EXIT_STATUS"])
            return EXIT_FAILURE
