"""A chunk streamed to an rclone remote as the backup stream makes it (`rclone
rcat`, fed from memory): RcloneTarget.begin_put's, split off rclone.py by role.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Sequence

from dedupd import proc
from dedupd.backup.compress import widen_pipe

# rclone's umask: its local backend makes files 0666 and directories 0777 less the
# umask; a backup's chunks hold every file of the dataset, those only root may read
# included, so they are root's alone (as restic's and borg's repositories)
PRIVATE = 0o077


class LiveRcat:
    """One streamed upload: write() what the stream produces, then finish() or abort().

    Best effort by design: any failure (rclone exits, the pipe breaks, the
    watchdog fires) only makes finish() return False, and the caller uploads
    the chunk again from its spooled copy. The watchdog bounds the whole
    upload (rclone may stop reading without exiting).
    """

    def __init__(self, argv: Sequence[str], timeout: float, takes_short: bool = False
                 ) -> None:
        self.failed = False
        self.takes_short = takes_short
        try:
            self._p: subprocess.Popen[bytes] | None = proc.spawn(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, umask=PRIVATE)
        except (proc.MissingTool, OSError):  # put() from the spool will say why
            self._p, self.failed = None, True
            return
        assert self._p.stdin is not None
        widen_pipe(self._p.stdin)
        self._watchdog = threading.Timer(timeout, self.abort)
        self._watchdog.daemon = True
        self._watchdog.start()

    def write(self, data: memoryview) -> None:
        if self.failed or self._p is None or self._p.stdin is None:
            return
        try:
            self._p.stdin.write(data)
        except (OSError, ValueError):  # rclone stopped reading (or was killed)
            self.abort()

    def finish(self) -> bool:
        """Close the body and wait: True when rclone stored it (exit 0)."""
        if self._p is None:
            return False
        self._watchdog.cancel()
        if not self.failed:
            try:
                self._p.stdin.close()  # type: ignore[union-attr]
            except OSError:
                self.failed = True
        try:
            rc = self._p.wait(timeout=self._watchdog.interval)
        except subprocess.TimeoutExpired:
            self.abort()
            rc = None
        self._close_pipes()
        return rc == 0 and not self.failed

    def abort(self) -> None:
        """Stop the upload: SIGKILL rclone and reap it (safe from the watchdog thread)."""
        self.failed = True
        if self._p is None:
            return
        self._watchdog.cancel()
        if self._p.poll() is None:
            self._p.kill()
        self._p.wait()
        self._close_pipes()

    def _close_pipes(self) -> None:
        assert self._p is not None
        for f in (self._p.stdin, self._p.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
