"""CPU and I/O priority of the daemon ([daemon] nice, ionice).

On Linux both the nice value and the I/O priority are per *thread* (new
threads and child processes inherit them from the thread that creates them).
The daemon uses that: every thread that does work (volume steps, backup jobs,
and the subprocesses they start) runs at the configured low priority, while
the event-loop thread, which only answers the control sockets and hands out
turns, goes back to normal CPU priority when it may (root). A nice-19 loop on
a busy host would otherwise answer `dedupd status` tens of milliseconds late.
Under systemd the unit's Nice= and IOSchedulingClass= set the starting point.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os

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
    nr = _SYS_IOPRIO_SET.get(os.uname().machine)  # platform.machine()'s, without platform
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
    """Set the calling thread's CPU and I/O priority as configured; say what was done.

    Raising priority needs root (CAP_SYS_NICE); without it the current value stays.
    """
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
    get_nr = {"x86_64": 252, "aarch64": 31}.get(os.uname().machine)
    if get_nr is None:
        return -1
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(get_nr, _IOPRIO_WHO_PROCESS, 0))


def work_thread_init(cfg: DaemonConfig) -> None:
    """ThreadPoolExecutor initializer: a work thread runs at the configured priority."""
    # Without root a thread cannot go below the value it inherited: keep that then.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, cfg.nice)
    if cfg.ionice != "none":
        set_ioprio(cfg.ionice)


def responsive_loop_thread(cfg: DaemonConfig) -> int:
    """Put the calling (event-loop) thread back at nice 0 when allowed; returns its nice.

    The loop thread does little CPU work (status replies, scheduling); the
    configured priority still applies to every work thread via work_thread_init.
    """
    if cfg.nice > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except OSError:
            log.debug("event loop thread stays at nice %d (not root)", cfg.nice)
    return os.getpriority(os.PRIO_PROCESS, 0)
