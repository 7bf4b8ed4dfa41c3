"""The daemon: Config -> startup -> main loop -> graceful shutdown.

Startup order matters and is what systemd is told: take the lock (one daemon
per runtime dir), lower priority, open the index, finish or roll back
interrupted operations (dedupd.dedup.recovery.recover_volumes, shared with
`dedupd recover`), validate the backup schedules, bind the control sockets,
and only then send READY=1.

The main loop serves volume workers round-robin, one bounded step per worker
per turn. The passes themselves run in one child process (dedupd/stepper.py)
at [daemon] nice, so neither their blocking calls nor their hold on the GIL
delay the loop, which answers the control sockets at normal priority. SIGHUP
reloads the config without dropping counters or the pass under way;
SIGTERM/SIGINT stop: the current step may finish within [daemon]
stop_timeout, then each pass is closed between steps. A step that overruns is
killed with its process; the journal lets the next start recover whatever it
was doing. A backup job still running at the deadline is abandoned (the
caller exits the process without waiting for its thread). What the daemon does
when asked (a control command, SIGHUP's reload) is in daemon_requests.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import re
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dedupd import daemon_requests
from dedupd.config import Config, VolumeConfig
from dedupd.control import Access, ControlServer
from dedupd.dedup.recovery import recover_volumes
from dedupd.errors import DedupdError
from dedupd.files.fsid import host_identity
from dedupd.index.store import Store
from dedupd.notify import Notifier, watchdog_interval
from dedupd.proc_priority import apply_priority, responsive_loop_thread, work_thread_init
from dedupd.runtime import (
    PidLock,
    group_id,
    prepare_runtime_dir,
    raise_fd_limit,
)
from dedupd.scheduler import BackupScheduler
from dedupd.status import StatusBoard, WorkerStatus
from dedupd.stepper import StepProcess, StepProcessDied
from dedupd.workers import RoundRobin, VolumeWorker

log = logging.getLogger("dedupd.daemon")

# Loader: re-reads the config (startup and SIGHUP) -> the config and the volumes to serve.
Loader = Callable[[], tuple[Config, list[VolumeConfig]]]
STATUS_EVERY = 2.0
# The step thread holds the GIL for long stretches of pure Python (walks, hashing
# bookkeeping); a shorter switch interval bounds how long a status query waits.
SWITCH_INTERVAL = 0.001
_SOCK_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class DaemonOptions:
    dry_run: bool = False
    force_rescan: bool = False
    db_url: str | None = None  # --db overrides [database].url
    log_level_fixed: bool = False  # --log-level given: a reload keeps it
    pidfile: Path | None = None  # lock + pid file; default RUNTIME_DIR/dedupd.pid


class Daemon:
    def __init__(self, loader: Loader, opts: DaemonOptions) -> None:
        self.loader, self.opts = loader, opts
        self.cfg, vols = loader()
        self.vols = {v.name: v for v in vols}
        self.board = StatusBoard()
        self.notify = Notifier()
        self.rr = RoundRobin()
        dc = self.cfg.daemon
        self.steps = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedupd-step",
                                        initializer=work_thread_init, initargs=(dc,))
        self.abandoned = False  # the stop overran stop_timeout (exit status 1)
        self._stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
        self.lock = PidLock(self.pidfile)
        self.store: Store | None = None
        self.control: ControlServer | None = None
        self.scheduler: BackupScheduler | None = None
        self.stepper: StepProcess | None = None
        self.metrics: Any = None  # dedupd.metrics.MetricsServer when [daemon] metrics_address

    @property
    def runtime_dir(self) -> Path:
        return self.cfg.daemon.runtime_dir

    @property
    def pidfile(self) -> Path:
        return self.opts.pidfile or self.runtime_dir / "dedupd.pid"

    # -- lifecycle -----------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; 0 after a clean stop."""
        try:
            self._install_signals()  # a SIGTERM during recovery stops right after it
            await self.startup()
            self.notify.ready(self.board.summary())
            log.info("dedupd %s ready: %d volume(s), %d backup job(s), sockets in %s",
                     self.board.snapshot()["version"], len(self.vols), len(self.cfg.backups),
                     self.runtime_dir)
            main = asyncio.create_task(self._main_loop(), name="main-loop")
            await self._stop.wait()
            return await self.shutdown(main)
        finally:
            self._release()

    async def startup(self) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL)
        # A full garbage collection holds the GIL, so it stalls status answers; keep
        # the long-lived objects of the imports (botocore, asyncio...) out of it.
        gc.freeze()
        prepare_runtime_dir(self.runtime_dir, self.cfg.daemon.socket_group, self.cfg.source)
        raise_fd_limit()
        lock_fd = self.lock.acquire()
        done = apply_priority(self.cfg.daemon)  # the process's starting point, inherited
        # Fork the step process now: no other thread exists yet, no socket is bound.
        self.stepper = StepProcess(self.opts.db_url or self.cfg.database.url, self.cfg.daemon,
                                   self.cfg.database.host)
        self.stepper.start(close_fds=(lock_fd,))
        # Backup jobs (asyncio.to_thread) run in the default executor: low priority too.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(
            thread_name_prefix="dedupd-job", initializer=work_thread_init,
            initargs=(self.cfg.daemon,)))
        done["loop_thread_nice"] = responsive_loop_thread(self.cfg.daemon)
        log.info("priority: %s", done)
        self.store = Store(self.opts.db_url or self.cfg.database.url,
                           host_identity(self.cfg.database.host))
        await self._recover()
        self.scheduler = BackupScheduler(self.board, self.store, self.opts.dry_run,
                                         lambda: self.cfg)
        self.scheduler.validate(self.cfg.backups)  # a bad schedule is exit 78, before READY
        d = self.cfg.daemon
        access = Access(group_id(d.socket_group), group_id(d.admin_group))
        self.control = ControlServer(functools.partial(daemon_requests.handle, self), access,
                                     d.client_idle_timeout)
        try:
            await self.control.listen(self.runtime_dir / "dedupd.sock", None, access.socket_gid)
        except OSError as e:
            raise DedupdError(f"cannot listen on {self.runtime_dir / 'dedupd.sock'}: "
                              f"{e.strerror}") from None
        for v in self.vols.values():
            await self.add_volume(v)
        self.scheduler.update(self.cfg.backups)
        if d.metrics_address:
            self._serve_metrics(d.metrics_address)
        self.board.state = "running"
        self._tasks += [asyncio.create_task(self._status_loop(), name="status")]
        wd = watchdog_interval()
        if wd is not None:
            self._tasks.append(asyncio.create_task(self._watchdog_loop(wd), name="watchdog"))

    async def _recover(self) -> None:
        """Finish or roll back interrupted destructive steps, before anything else."""
        self.board.state = "recovering"
        log.info("recovering interrupted operations")
        store, dry, vols = self.store, self.opts.dry_run, {**self.cfg.volumes, **self.vols}
        assert store is not None  # opened by startup() before this
        result = await asyncio.get_running_loop().run_in_executor(
            self.steps, lambda: recover_volumes(store, vols, dry_run=dry, skip_busy=True))
        for r in result:
            log.info("recovered: %s", r.as_json())
        log.info("recovery done: %d unfinished operation(s) %sresolved", len(result),
                 "would be " if dry else "")

    async def shutdown(self, main: asyncio.Task[None]) -> int:
        """Stop within stop_timeout: finish the current step, close passes, close sockets."""
        timeout = self.cfg.daemon.stop_timeout
        deadline = time.monotonic() + timeout
        self.board.state = "stopping"
        self.notify.stopping(self.board.summary())
        log.info("stopping (waiting up to %.0fs for the current step)", timeout)
        self.wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(main), timeout)
        except TimeoutError:
            self.abandoned = True
            log.error("a step did not finish within %.0fs; killed it (interrupted operations "
                      "are recovered at the next start)", timeout)
            if self.stepper is not None:
                self.stepper.interrupt()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(main), 10)
        if self.stepper is not None:
            stepper = self.stepper
            if not await self._in_step_thread(lambda: stepper.stop(_left(deadline))):
                self.abandoned = True
                log.error("the step process did not close its passes in time; killed it")
        if self.scheduler is not None and not await self.scheduler.stop(_left(deadline)):
            self.abandoned = True
            log.error("a backup job is still running; exiting anyway (it resumes next run)")
        for t in self._tasks:
            t.cancel()
        if self.control is not None:
            await self.control.close()
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        if not self.abandoned and self.store is not None:
            self.store.close()
        log.info("stopped")
        return 0 if not self.abandoned else 1

    async def _in_step_thread(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.steps, fn)

    # -- the main loop ------------------------------------------------------------

    async def _main_loop(self) -> None:
        while not self._stop.is_set():
            await self._reap_removed()
            now = time.time()
            self.board.runnable = self.rr.runnable_names(now)
            w = self.rr.next(now)
            if w is None:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.rr.sleep_for(now))
                continue
            await self._turn(w)

    async def _turn(self, w: VolumeWorker) -> None:
        if not w.in_pass:
            w.begin()
        assert self.stepper is not None
        stepper = self.stepper
        try:
            out = await self._in_step_thread(lambda: w.step(stepper))
        except StepProcessDied as e:
            await self._step_process_died(e)
            return
        except Exception as e:
            w.failed(e)
            self.board.error(f"volume {w.vol.name}", str(e))
            return
        if out.report is None:
            w.advanced(out)
            return
        for p in w.finished(out.report, out.actions):
            self.board.error(f"volume {w.vol.name}", f"{p.get('reason')}: {p.get('detail', '')}",
                             p.get("path", ""))

    async def _step_process_died(self, err: Exception) -> None:
        """Every pass under way is lost: fail them (retried later), start a new process."""
        for w in self.rr.workers.values():
            if w.in_pass:
                w.failed(err)
                self.board.error(f"volume {w.vol.name}", str(err))
        if not self._stop.is_set() and self.stepper is not None:
            stepper = self.stepper
            await self._in_step_thread(stepper.restart)
            log.warning("step process restarted (pid %d)", stepper.pid)

    async def _reap_removed(self) -> None:
        for name, w in list(self.rr.workers.items()):
            if w.removed:
                stepper = self.stepper
                assert stepper is not None
                with contextlib.suppress(DedupdError):
                    await self._in_step_thread(functools.partial(w.close, stepper))
                self.rr.remove(name)
                self.board.workers.pop(name, None)
                log.info("volume %s: removed from service", name)

    # -- volumes, sockets, reload -------------------------------------------------------

    async def add_volume(self, v: VolumeConfig) -> None:
        d = self.cfg.daemon
        st = WorkerStatus(v.name, v.kind, str(v.path), v.mode)
        self.board.workers[v.name] = st
        self.rr.add(VolumeWorker(v, st, self.opts.dry_run, self.opts.force_rescan,
                                 d.pass_interval))
        path = self.volume_socket(v.name)
        if path is None:
            log.warning("volume %s: name unusable as a socket name; reach it through "
                        "dedupd.sock with {\"volume\": ...}", v.name)
            return
        assert self.control is not None
        try:
            await self.control.listen(path, v.name, self.control.access.socket_gid)
        except OSError as e:
            log.error("volume %s: cannot listen on %s: %s", v.name, path, e.strerror)
            self.board.error(f"volume {v.name}", f"socket {path}: {e.strerror}")

    async def reload(self) -> None:
        """SIGHUP: re-read the config; on any error keep running with the old one
        (daemon_requests.reload)."""
        await daemon_requests.reload(self)

    def volume_socket(self, name: str) -> Path | None:
        if name == "dedupd" or not _SOCK_NAME.match(name):
            return None
        return self.runtime_dir / f"{name}.sock"

    # -- metrics ---------------------------------------------------------------------------

    def _serve_metrics(self, address: str) -> None:
        """Serve Prometheus metrics on address (dedupd/metrics.py) from a thread of its own.

        A scrape reads the status board on the loop (its owner) and the backup rows
        from the index in the scrape's thread, like the backup jobs' threads do.
        """
        from dedupd import metrics

        loop = asyncio.get_running_loop()

        async def snapshot() -> dict[str, Any]:
            return self.board.snapshot()

        def source() -> list[Any]:
            doc = asyncio.run_coroutine_threadsafe(snapshot(), loop).result(10)
            facts = metrics.backup_facts(self.store, list(self.cfg.backups)) \
                if self.store is not None else []
            return metrics.families(doc, facts)

        self.metrics = metrics.MetricsServer(address, source)
        try:
            self.metrics.start()
        except OSError as e:
            self.metrics = None
            raise DedupdError(f"cannot serve metrics on {address} ([daemon] metrics_address): "
                              f"{e.strerror}") from None
        log.info("metrics on http://%s/metrics", address)

    # -- helpers -------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._tasks.append(
            asyncio.create_task(self.reload(), name="reload")))

    async def _status_loop(self) -> None:
        last = ""
        while True:
            text = self.board.summary()
            if text != last:
                self.notify.status(text)
                last = text
            await asyncio.sleep(STATUS_EVERY)

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.notify.watchdog()
            await asyncio.sleep(interval)

    def _release(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
        if self.stepper is not None:
            self.stepper.kill()  # only if still running (startup failed, or abandoned)
        self.lock.release()
        self.notify.close()
        self.steps.shutdown(wait=False, cancel_futures=True)


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())
