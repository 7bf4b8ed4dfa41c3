"""sd_notify: tell systemd what the daemon is doing (READY, STATUS, WATCHDOG, ...).

A few lines of socket code rather than the `sdnotify` package: the protocol is
one datagram of `KEY=VALUE` lines to the AF_UNIX socket named by $NOTIFY_SOCKET
(a leading '@' means the abstract namespace). That package takes no
address (only the environment's; tests aim a notifier at their own socket),
connects once when constructed, encodes as Latin-1 (a STATUS naming a path
outside Latin-1, "/srv/фото", would be silently dropped) and reports no
failure to its caller. Outside systemd (no
NOTIFY_SOCKET) every call here is a no-op, so the daemon never needs to ask.
Sending never raises: a lost notification must not kill the daemon (systemd
will notice a missing READY or WATCHDOG by itself), but the caller learns it.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("dedupd.notify")


class Notifier:
    """One datagram socket to systemd, opened lazily; safe to call without systemd."""

    def __init__(self, address: str | None = None) -> None:
        addr = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | None = addr or None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send KEY=VALUE fields in one datagram; True if it was delivered to the socket."""
        if self.address is None:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode("utf-8", "replace")
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]  # abstract namespace
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, target)
            return True
        except OSError as e:
            log.debug("sd_notify to %s failed: %s", self.address, e)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        # STATUS is one line by protocol; a newline would start a new field.
        return self.send(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) match this to the reload request.
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str = "") -> bool:
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked.

    WATCHDOG_PID, when set, names the process systemd expects the pings from;
    if that is not us (a child that inherited the environment), we must not ping.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6 / 2
