"""Who is at the other end of a control connection, what it may do, and whether it
gets a connection at all.

Credentials come from SO_PEERCRED (+ the peer's supplementary groups). No user
can lock the others out: every uid but root's and the daemon's own holds at
most PER_UID connections, and the last RESERVED of the MAX_CLIENTS places are
kept for admins (root, admin group), plus ROOT_RESERVE beyond them for root
alone, so `dedupd status` and `pause` from root always get in.
"""

from __future__ import annotations

import os
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

MAX_CLIENTS = 1024  # connections at once; beyond this a new client gets "busy"
RESERVED = 64  # of MAX_CLIENTS, places only admins (root, admin group) may take
ROOT_RESERVE = 16  # beyond MAX_CLIENTS, places for root (and the daemon's uid) alone
PER_UID = 32  # connections one uid may hold (root and the daemon's uid: no cap)


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int]


def peer_of(sock: socket.socket) -> Peer:
    """Credentials of the process at the other end (SO_PEERCRED + its supplementary groups)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid, frozenset(_proc_groups(pid)) | {gid})


def _proc_groups(pid: int) -> list[int]:
    # SO_PEERCRED carries only the primary gid; the supplementary groups of the
    # connecting process are in /proc. If it already exited, primary gid only.
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:] if g.isdigit()]
    except OSError:
        pass
    return []


@dataclass(frozen=True)
class Access:
    """root (or the daemon's own uid) and admin_gid may mutate; socket_gid may read."""

    socket_gid: int | None
    admin_gid: int | None
    owner_uid: int = os.geteuid()

    def is_root(self, p: Peer) -> bool:
        return p.uid in (0, self.owner_uid)

    def level(self, p: Peer) -> str:
        """'admin', 'read' or 'none'."""
        if self.is_root(p):
            return "admin"
        if self.admin_gid is not None and self.admin_gid in p.groups:
            return "admin"
        if self.socket_gid is not None and self.socket_gid in p.groups:
            return "read"
        return "none"


class Admission:
    """Who gets one more connection: counts open ones, total and per uid."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.total = 0
        self.by_uid: Counter[int] = Counter()

    def refusal(self, p: Peer, level: str) -> dict[str, Any] | None:
        """None to admit p (then enter/leave around its connection), else the reply."""
        if level == "none":
            return denied(p, "read")
        root = self.access.is_root(p)
        if not root and self.by_uid[p.uid] >= PER_UID:
            return busy(f"uid {p.uid} already has {PER_UID} connections open "
                         "(the limit per user)")
        limit = MAX_CLIENTS + ROOT_RESERVE if root else \
            MAX_CLIENTS if level == "admin" else MAX_CLIENTS - RESERVED
        if self.total >= limit:
            return busy("too many clients")
        return None

    def enter(self, p: Peer) -> None:
        self.total += 1
        self.by_uid[p.uid] += 1

    def leave(self, p: Peer) -> None:
        self.total -= 1
        self.by_uid[p.uid] -= 1
        if self.by_uid[p.uid] <= 0:
            del self.by_uid[p.uid]


def busy(why: str) -> dict[str, Any]:
    return {"ok": False, "error": f"busy: {why}; try again later", "code": "EBUSY"}


def denied(peer: Peer, need: str) -> dict[str, Any]:
    what = "root or the admin group" if need == "admin" else "root or the socket group"
    return {"ok": False, "error": f"permission denied: uid {peer.uid} is not {what}",
            "code": "EPERM"}
