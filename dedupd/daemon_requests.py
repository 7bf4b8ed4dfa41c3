"""What the daemon does when asked from outside, on its loop: a command over a control
socket (handle: quick, it must not hold up the loop) and SIGHUP (reload: the config
re-read off the loop and applied between steps; on any error the old one stays).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dedupd.config import Config, VolumeConfig
from dedupd.control import ControlError
from dedupd.errors import DedupdError

if TYPE_CHECKING:
    from dedupd.daemon import Daemon

log = logging.getLogger("dedupd.daemon")


def handle(d: Daemon, cmd: str, volume: str | None, req: dict[str, Any]) -> dict[str, Any]:
    """Control socket handler (runs on the loop; must be quick)."""
    if volume is not None and volume not in d.board.workers:
        raise ControlError(f"no volume {volume!r} (volumes: "
                           f"{', '.join(d.board.workers) or 'none'})")
    if cmd == "status":
        return d.board.snapshot(volume)
    if cmd == "stats":
        return d.board.stats(volume)
    if cmd == "ping":
        return {"pid": d.board.pid}
    if cmd == "help":
        from dedupd.control import COMMANDS
        return {"commands": list(COMMANDS), "docs": "docs/status.md"}
    names = [volume] if volume else list(d.rr.workers)
    for n in names:
        w = d.rr.workers[n]
        if cmd == "pause":
            w.st.paused = True
        elif cmd == "resume":
            w.st.paused = False
        elif cmd == "rescan":
            w.st.rescan_requested = True
            w.force_next = True
    log.info("%s %s (requested over the control socket)", cmd, ", ".join(names) or "-")
    d.wake.set()
    return {cmd: names}


async def reload(d: Daemon) -> None:
    """SIGHUP: re-read the config; on any error keep running with the old one."""
    if d.board.state != "running":
        log.warning("SIGHUP ignored while %s", d.board.state)
        return
    async with d.reload_lock:
        d.notify.reloading()
        d.board.state = "reloading"
        log.info("reloading %s", d.cfg.source)
        try:
            # Off the loop: the loader reads the file and stats every volume path,
            # which blocks on a hung or spinning-up mount; status answers must not.
            cfg, vols = await asyncio.to_thread(d.loader)
            assert d.scheduler is not None
            d.scheduler.validate(cfg.backups, cfg.source)
            await _apply(d, cfg, {v.name: v for v in vols})
            d.board.reloads += 1
            log.info("reloaded: %d volume(s), %d backup job(s)", len(vols), len(cfg.backups))
        except DedupdError as e:
            log.error("reload failed, still running the previous config: %s", e)
            d.board.error("reload", str(e))
        finally:
            d.board.state = "running"
            d.notify.ready(d.board.summary())
            d.wake.set()

async def _apply(d: Daemon, cfg: Config, vols: dict[str, VolumeConfig]) -> None:
    if cfg.daemon.runtime_dir != d.cfg.daemon.runtime_dir:
        log.warning("[daemon] runtime_dir changed: takes effect at the next restart")
        cfg = _with_runtime_dir(cfg, d.cfg.daemon.runtime_dir)
    if cfg.daemon.metrics_address != d.cfg.daemon.metrics_address:
        log.warning("[daemon] metrics_address changed: takes effect at the next restart")
    d.cfg = cfg
    if not d.opts.log_level_fixed:
        logging.getLogger().setLevel(cfg.daemon.log_level.upper())
    for name, w in d.rr.workers.items():
        if name not in vols:
            w.removed = True
            path = d.volume_socket(name)
            if path is not None and d.control is not None:
                await d.control.unlisten(path)
        elif vols[name] != w.vol:
            w.pending_vol = vols[name]  # the pass under way keeps its config
            w.pass_interval = cfg.daemon.pass_interval
            if not w.in_pass:
                w.due = time.time()
    for name, v in vols.items():
        if name not in d.rr.workers:
            await d.add_volume(v)
    d.vols = vols
    assert d.scheduler is not None
    d.scheduler.update(cfg.backups)


def _with_runtime_dir(cfg: Config, runtime_dir: Path) -> Config:
    return dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon,
                                                               runtime_dir=runtime_dir))
