"""Run gently: CPU niceness and I/O class from [daemon] nice / ionice."""

from __future__ import annotations

import ctypes
import logging
import os

from dedupd.config import DaemonConfig

log = logging.getLogger("dedupd")

_IOPRIO_WHO_PROCESS = 1
_CLASSES = {"best-effort": 2, "idle": 3}
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "armv7l": 314, "i686": 289}


def apply_priority(daemon_cfg: DaemonConfig) -> dict[str, object]:
    """Lower this process's CPU and I/O priority; returns what was applied.

    Never raises: a host that refuses (no permission to raise priority, unknown
    architecture) still dedupes, just not as gently; the reason is logged.
    """
    applied: dict[str, object] = {}
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if daemon_cfg.nice > current:
            os.setpriority(os.PRIO_PROCESS, 0, daemon_cfg.nice)
        applied["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError as e:
        log.warning("cannot set nice %d: %s", daemon_cfg.nice, e.strerror)
    cls = _CLASSES.get(daemon_cfg.ionice)
    if cls is not None:
        if set_ioprio(cls):
            applied["ionice"] = daemon_cfg.ionice
        else:
            log.warning("cannot set I/O class %s", daemon_cfg.ionice)
    return applied


def set_ioprio(io_class: int, level: int = 0) -> bool:
    """ioprio_set(2) for this process (no libc wrapper exists, hence syscall)."""
    nr = _SYS_IOPRIO_SET.get(os.uname().machine)
    if nr is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    value = (io_class << 13) | (level if io_class != 3 else 0)
    return int(libc.syscall(nr, _IOPRIO_WHO_PROCESS, 0, value)) == 0


def get_ioprio_class() -> int:
    """The I/O class of this process (0 none, 1 rt, 2 best-effort, 3 idle)."""
    nr = {"x86_64": 252, "aarch64": 31, "armv7l": 315, "i686": 290}.get(os.uname().machine)
    if nr is None:
        return -1
    libc = ctypes.CDLL(None, use_errno=True)
    v = int(libc.syscall(nr, _IOPRIO_WHO_PROCESS, 0))
    return -1 if v < 0 else v >> 13
