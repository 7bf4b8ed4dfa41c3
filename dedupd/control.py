"""The control socket: newline-delimited JSON, one request -> one reply.

Server side (asyncio, in the daemon's loop) and a small blocking client for
`dedupd status`. The server is hostile-input proof: a line is read in bounded
chunks (a longer one is discarded up to its newline and answered with an
error, memory never grows past MAX_LINE + one chunk), a silent client is
dropped after IDLE_TIMEOUT, a client that stops reading is dropped after
WRITE_TIMEOUT, and a client that vanishes mid-reply only ends its own
connection. Who may do what and who gets a connection at all comes from
SO_PEERCRED (dedupd/control_access.py: Access, Admission). A refused client is
told why in one reply line before the connection is closed; the client reads
that line even when the close beat its request (EPIPE).
On close() every connected client gets a last "daemon is stopping" line and
its connection ends normally (no task is left for the loop to cancel).
The protocol is documented in docs/status.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Access and Peer are part of this module's interface too (the daemon and tests
# build a ControlServer from them).
from dedupd.control_access import Access as Access
from dedupd.control_access import Admission, denied, peer_of
from dedupd.control_access import Peer as Peer
from dedupd.errors import DedupdError, TemporaryFailure

log = logging.getLogger("dedupd.control")

MAX_LINE = 64 * 1024  # a request is a few dozen bytes; anything this long is garbage
CHUNK = 64 * 1024
MAX_DISCARD = 64 * 1024 * 1024  # give up on a client sending an endless line
IDLE_TIMEOUT = 30.0
WRITE_TIMEOUT = 10.0
BACKLOG = 512
MAX_REPLY = 64 * 1024 * 1024  # client side bound on one reply

READ_COMMANDS = ("status", "stats", "ping", "help")
MUTATING_COMMANDS = ("pause", "resume", "rescan")
COMMANDS = READ_COMMANDS + MUTATING_COMMANDS


class ControlError(DedupdError):
    """A request the daemon refused (unknown volume, bad argument, no permission)."""


class PermissionDenied(ControlError):
    pass


# handler(cmd, volume or None, request) -> reply fields; raises ControlError to refuse.
Handler = Callable[[str, "str | None", dict[str, Any]], dict[str, Any]]


class _TooLong(Exception):
    pass


class _Lines:
    """Bounded line reader over a StreamReader."""

    def __init__(self, reader: asyncio.StreamReader, timeout: float) -> None:
        self.reader, self.timeout = reader, timeout
        self.buf = bytearray()

    async def _chunk(self) -> bytes:
        return await asyncio.wait_for(self.reader.read(CHUNK), self.timeout)

    async def next(self) -> bytes | None:
        """The next line without its newline; None at EOF; raises _TooLong (line dropped)."""
        while True:
            i = self.buf.find(b"\n")
            if i > MAX_LINE or (i < 0 and len(self.buf) > MAX_LINE):
                await self._discard()
                raise _TooLong()
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            chunk = await self._chunk()
            if not chunk:  # EOF: a last request without newline still counts
                line, self.buf = bytes(self.buf), bytearray()
                return line or None
            self.buf += chunk

    async def _discard(self) -> None:
        dropped = 0
        while (i := self.buf.find(b"\n")) < 0:
            dropped += len(self.buf)
            self.buf.clear()
            if dropped > MAX_DISCARD:
                raise ConnectionAbortedError("line without end")
            chunk = await self._chunk()
            if not chunk:
                raise ConnectionAbortedError("EOF inside an over-long line")
            self.buf += chunk
        del self.buf[: i + 1]


class ControlServer:
    """Serves any number of Unix sockets with one handler."""

    def __init__(self, handler: Handler, access: Access,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.handler, self.access, self.idle_timeout = handler, access, idle_timeout
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.admission = Admission(access)
        self.served = 0
        # every connection being served, so that close() can end each one cleanly
        self._live: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def clients(self) -> int:
        return self.admission.total

    async def listen(self, path: Path, default_volume: str | None, gid: int | None) -> None:
        """Bind path (0660, group gid) and serve it; a stale socket file is replaced.

        The caller holds the daemon lock, so a socket file left at path is ours
        from a previous run, never another live daemon's.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            os.chmod(path, 0o660)
            if gid is not None and os.geteuid() == 0:
                os.chown(path, 0, gid)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise

        async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self._serve_client(r, w, default_volume)

        self.servers[os.fspath(path)] = await asyncio.start_unix_server(
            on_client, sock=sock, backlog=BACKLOG)

    async def unlisten(self, path: Path) -> None:
        srv = self.servers.pop(os.fspath(path), None)
        if srv is not None:
            srv.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    async def close(self, grace: float = 2.0) -> None:
        """Stop listening, tell every connected client the daemon is stopping, and
        wait (up to grace seconds) until each connection has ended."""
        for p in list(self.servers):
            await self.unlisten(Path(p))
        notice = _line({"ok": False, "error": "the daemon is stopping", "code": "ESHUTDOWN"})
        for w in list(self._live.values()):
            with contextlib.suppress(Exception):
                w.write(notice)
                w.close()  # the reader sees EOF: the conversation returns
        if self._live:
            await asyncio.wait(list(self._live), timeout=grace)

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            default_volume: str | None) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._live[task] = writer
        admitted: Peer | None = None
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            level = self.access.level(peer)
            refused = self.admission.refusal(peer, level)
            if refused is not None:
                await self._reply(writer, refused)
                return
            self.admission.enter(peer)
            admitted = peer
            await self._conversation(_Lines(reader, self.idle_timeout), writer, peer, level,
                                     default_volume)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away, stalled or broke the protocol: drop it alone
        finally:
            if admitted is not None:
                self.admission.leave(admitted)
            del self._live[task]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _conversation(self, lines: _Lines, writer: asyncio.StreamWriter, peer: Peer,
                            level: str, default_volume: str | None) -> None:
        while True:
            try:
                line = await lines.next()
            except _TooLong:
                await self._reply(writer, {"ok": False,
                                           "error": f"request longer than {MAX_LINE} bytes"})
                continue
            if line is None:
                return
            if not line.strip():
                continue
            await self._reply(writer, self.dispatch(line, peer, level, default_volume))

    def dispatch(self, line: bytes, peer: Peer, level: str,
                 default_volume: str | None) -> dict[str, Any]:
        """One request line -> one reply document (never raises)."""
        try:
            req = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            return {"ok": False, "error": "request is not JSON (send {\"cmd\": \"help\"})"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": "request must be an object with a string \"cmd\""}
        cmd = req["cmd"]
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown command {cmd!r}",
                    "commands": list(COMMANDS)}
        if cmd in MUTATING_COMMANDS and level != "admin":
            return denied(peer, "admin")
        volume = req.get("volume", default_volume)
        if volume is not None and not isinstance(volume, str):
            return {"ok": False, "error": "\"volume\" must be a string"}
        self.served += 1
        try:
            return {"ok": True, **self.handler(cmd, volume, req)}
        except ControlError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a handler bug must not take the socket down
            log.exception("control command %s failed", cmd)
            return {"ok": False, "error": f"internal error: {e}"}

    async def _reply(self, writer: asyncio.StreamWriter, doc: dict[str, Any]) -> None:
        writer.write(_line(doc))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


def _line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=True).encode() + b"\n"


class ControlClient:
    """Blocking client: one connection, any number of requests (for --watch)."""

    def __init__(self, path: Path | str, timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def connect(self) -> None:
        """Connect, waiting up to timeout while the daemon's listen queue is full
        (a Unix socket with a timeout answers EAGAIN at once instead of waiting)."""
        deadline = time.monotonic() + self.timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                raise TemporaryFailure(f"no daemon listening on {self.path} (is dedupd "
                                       "running? `systemctl status dedupd`)") from None
            except PermissionError:
                s.close()
                raise PermissionDenied(f"permission denied: {self.path} (root or a member "
                                       "of the socket's group may connect)") from None
            except BlockingIOError:
                s.close()
                if time.monotonic() > deadline:
                    raise TemporaryFailure(f"{self.path}: the daemon takes no new "
                                           "connections (its queue stayed full for "
                                           f"{self.timeout:.0f}s)") from None
                time.sleep(0.005)
        self.sock = s

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one request and return the reply; raises PermissionDenied (EPERM),
        TemporaryFailure (busy, stopping, gone, silent) or ControlError (refused)."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        try:
            self.sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon closed first: the reason it gave waits in our receive buffer
        except TimeoutError:
            raise TemporaryFailure(f"{self.path}: the daemon does not read requests "
                                   f"(nothing taken within {self.timeout:.0f}s)") from None
        try:
            reply = json.loads(self._line())
        except ValueError:
            raise ControlError(f"{self.path}: the reply is not JSON") from None
        if not isinstance(reply, dict):
            raise ControlError(f"{self.path}: the reply is not a JSON object")
        if not reply.get("ok"):
            err = str(reply.get("error", "request failed"))
            code = reply.get("code")
            if code == "EPERM":
                raise PermissionDenied(err)
            if code in ("EBUSY", "ESHUTDOWN"):
                raise TemporaryFailure(f"{self.path}: {err}")
            raise ControlError(err)
        return dict(reply)

    def _line(self) -> bytes:
        assert self.sock is not None
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_REPLY:
                raise ControlError("reply too long")
            try:
                chunk = self.sock.recv(CHUNK)
            except ConnectionResetError:
                chunk = b""  # after the daemon's last line: no more to read
            except TimeoutError:
                raise TemporaryFailure(f"{self.path}: no reply within {self.timeout:.0f}s "
                                       "(the daemon is busy or stuck)") from None
            if not chunk:
                raise TemporaryFailure(f"{self.path}: the daemon closed the connection "
                                       "without a reply (stopped or restarted?)")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
