"""The step process: volume passes run in one child process, one step per request.

Why a process and not a thread: a pass is mostly Python (walks, index
batches, hashing bookkeeping) and holds the GIL; at nice 19 on a busy host
the thread holding it can be preempted for tens of milliseconds, and every
status query waits for it. In a child process the passes only compete for CPU
(where the kernel favours the loop: it runs at normal priority, the child at
[daemon] nice), and a step that overruns the stop timeout can be killed
cleanly (destructive steps are journalled; the next start recovers them).

The protocol over the pipe between the two is dedupd/steppipe.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from dedupd.config import DaemonConfig, VolumeConfig
from dedupd.errors import DedupdError
from dedupd.files.fsid import host_identity
from dedupd.index.store import Store
from dedupd.proc_priority import work_thread_init
from dedupd.steppipe import CLOSE, ERR, EXIT, OK, STEP, Request, StepOutcome
from dedupd.volumes import PassOptions, Step, VolumePass, make_pass

log = logging.getLogger("dedupd.stepper")
MAX_PROBLEMS = 50  # problems of one pass handed to the parent (the rest are counted)


class StepProcessDied(DedupdError):
    """The step process exited or was killed in the middle of a request."""


class StepProcess:
    """Parent side. call() blocks: run it in a thread, never on the event loop."""

    def __init__(self, db_url: str, daemon_cfg: DaemonConfig, host: str | None = None) -> None:
        self.db_url, self.daemon_cfg, self.host = db_url, daemon_cfg, host
        self.pid = 0
        self.conn: Connection | None = None
        self.restarts = -1
        self.close_fds: tuple[int, ...] = ()

    def start(self, close_fds: tuple[int, ...] = ()) -> None:
        """Fork the child. Call early, while the parent has no other threads.

        close_fds: descriptors the child must not keep (the daemon's lock file:
        an orphaned child holding it would block the next start).
        """
        self.close_fds = close_fds
        parent, child = Pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            parent.close()
            for fd in close_fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            code = 1
            try:
                _child_main(child, self.db_url, self.daemon_cfg, self.host)
                code = 0
            except BaseException:
                log.exception("step process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        child.close()
        self.pid, self.conn = pid, parent
        self.restarts += 1

    def call(self, *req: Any) -> Any:
        assert self.conn is not None
        try:
            self.conn.send(req)
            status, value = self.conn.recv()
        except (EOFError, OSError) as e:
            raise StepProcessDied(f"step process {self.pid} died: {e or 'EOF'}") from None
        if status == ERR:
            raise DedupdError(str(value))
        return value

    def restart(self) -> None:
        self.kill()
        self.start(self.close_fds)

    def interrupt(self) -> None:
        """SIGKILL the child (from any thread); a call() waiting on it then fails."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def stop(self, timeout: float) -> bool:
        """Ask the child to close its passes and exit; kill it after timeout. True if clean."""
        if self.conn is None:
            return True
        with contextlib.suppress(OSError, EOFError):
            self.conn.send((EXIT,))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0] != 0:
                self.conn.close()
                self.conn = None
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def kill(self) -> None:
        if self.conn is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.conn.close()
        self.conn = None


class _Passes:
    """Child side: the live passes by volume name."""

    def __init__(self, db_url: str, host: str | None) -> None:
        self.db_url, self.host = db_url, host
        self._store: Store | None = None
        self.live: dict[str, tuple[VolumePass, Iterator[Step]]] = {}

    @property
    def store(self) -> Store:
        # Opened at the first step, not at fork: by then the parent has created
        # the schema (two processes creating it at once would collide).
        if self._store is None:
            self._store = Store(self.db_url, host_identity(self.host))
        return self._store

    def step(self, vol: VolumeConfig, dry_run: bool, force: bool) -> StepOutcome:
        if vol.name not in self.live:
            vp = make_pass(vol, self.store, PassOptions(dry_run, force))
            self.live[vol.name] = (vp, vp.steps())
        vp, gen = self.live[vol.name]
        try:
            s = next(gen)
        except StopIteration:
            del self.live[vol.name]
            r = vp.report()
            # the parent needs counts, not every action: keep the pipe message small
            slim = dataclasses.replace(r, actions=(), problems=r.problems[:MAX_PROBLEMS])
            return StepOutcome(report=slim, actions=len(r.actions))
        except BaseException:
            del self.live[vol.name]
            raise
        return StepOutcome(step=s, counters=live_counters(vp))

    def close(self, name: str) -> None:
        entry = self.live.pop(name, None)
        if entry is not None and hasattr(entry[1], "close"):
            entry[1].close()


def live_counters(vp: VolumePass) -> dict[str, int]:
    """The pass's counters, plus live progress (volumes/pipeline.Pass).

    A pass adds files_seen, files_hashed and bytes_read only when a phase is
    over; its walk and hash statistics have them as they grow. The pass's own
    value wins as soon as it exists, so nothing is counted twice.
    """
    c = dict(vp.counters)
    ws, hs = getattr(vp, "walk_stats", None), getattr(vp, "hash_stats", None)
    if ws is not None:
        c.setdefault("files_seen", int(ws.files_seen))
    if hs is not None:
        c.setdefault("files_hashed", int(hs.files_hashed))
        c.setdefault("bytes_read", int(hs.bytes_read))
    return c


def _child_main(conn: Connection, db_url: str, cfg: DaemonConfig, host: str | None) -> None:
    # The parent owns signals: Ctrl-C or a SIGTERM to the process group must not
    # cut a step in half here; the parent asks us to stop between steps.
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    work_thread_init(cfg)
    passes = _Passes(db_url, host)
    try:
        while True:
            try:
                req = conn.recv()
            except (EOFError, OSError):
                return  # the parent is gone
            if req[0] == EXIT:
                conn.send((OK, None))
                return
            conn.send(_answer(passes, req))
    finally:
        for name in list(passes.live):
            with contextlib.suppress(Exception):
                passes.close(name)
        if passes._store is not None:
            passes._store.close()


def _answer(passes: _Passes, req: Request) -> tuple[str, Any]:
    try:
        if req[0] == STEP:
            return OK, passes.step(req[1], req[2], req[3])
        if req[0] == CLOSE:
            passes.close(req[1])
            return OK, None
        return ERR, f"unknown request {req[0]!r}"
    except Exception as e:
        log.debug("step failed", exc_info=True)
        return ERR, f"{type(e).__name__}: {e}" if not isinstance(e, DedupdError) else str(e)
