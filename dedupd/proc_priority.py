"""CPU and I/O priority of the daemon process ([daemon] nice, ionice).

Applied once at start, before any worker thread exists: on Linux both the nice
value and the I/O priority are per thread, and new threads inherit them from
the thread that creates them. Under systemd the unit's Nice= and
IOSchedulingClass= already did the same; applying it again is harmless.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

from dedupd.config import DaemonConfig

log = logging.getLogger("dedupd.priority")

# ioprio_set(2) has no wrapper in glibc or Python; the syscall number is per arch.
_SYS_IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "i386": 289, "armv7l": 314,
                   "ppc64le": 273, "s390x": 282, "riscv64": 30}
_IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_SHIFT = 13
_CLASS = {"best-effort": 2, "idle": 3}


def ioprio_value(klass: str, level: int = 7) -> int:
    """The kernel's ioprio encoding: class in the top bits, level (0-7, BE only) below."""
    data = level if klass == "best-effort" else 0
    return (_CLASS[klass] << _IOPRIO_CLASS_SHIFT) | data


def set_ioprio(klass: str) -> bool:
    """Set this thread's (= the process's main thread's) I/O class; False if unsupported."""
    nr = _SYS_IOPRIO_SET.get(platform.machine())
    if nr is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(nr, _IOPRIO_WHO_PROCESS, 0, ioprio_value(klass))
    if rc != 0:
        err = ctypes.get_errno()
        log.warning("cannot set I/O class %s: %s", klass, os.strerror(err))
        return False
    return True


def apply_priority(cfg: DaemonConfig) -> dict[str, object]:
    """Lower (never raise, unless root) CPU and I/O priority as configured; say what was done."""
    done: dict[str, object] = {}
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if cfg.nice != current:
            os.setpriority(os.PRIO_PROCESS, 0, cfg.nice)
        done["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    except OSError as e:  # raising priority needs CAP_SYS_NICE: keep what we have
        log.warning("cannot set nice %d: %s", cfg.nice, e.strerror)
        done["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    if cfg.ionice != "none":
        done["ionice"] = cfg.ionice if set_ioprio(cfg.ionice) else "unchanged"
    return done


def current_ioprio() -> int:
    """ioprio_get(IOPRIO_WHO_PROCESS, 0) for tests and status; -1 if unsupported."""
    get_nr = {"x86_64": 252, "aarch64": 31}.get(platform.machine())
    if get_nr is None:
        return -1
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(get_nr, _IOPRIO_WHO_PROCESS, 0))
