"""The daemon's metrics endpoint: prometheus_client's WSGI app behind a server that
no client can make grow.

prometheus_client's own server (start_http_server) starts a thread per connection
and waits on each for its request without end. A metrics address is a TCP port
any local user may connect to: one who opened connections and sent nothing added
a thread to the root daemon with each, for as long as they liked (tens of
thousands in an hour: memory, and at last no thread for the daemon's own work).
Here a connection is served by a thread only while fewer than MAX_CLIENTS are (a
further one is closed at once), and dropped after IDLE_TIMEOUT seconds without
its request or without reading the reply, or CLIENT_DEADLINE seconds after it was
taken: the idle timeout is per read, so a client that sends a byte of its request
every few seconds held its slot for ever, and MAX_CLIENTS of them kept every
scrape out.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

MAX_CLIENTS = 16  # a Prometheus scrapes with one connection; a few more for people
IDLE_TIMEOUT = 10.0
CLIENT_DEADLINE = 30.0  # a scrape takes milliseconds


class _Handler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT  # StreamRequestHandler sets it on the connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        """Nothing: a scrape is not worth a log line."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # never joined at close: a stuck client cannot hold the stop
    request_queue_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.live: dict[socket.socket, float] = {}  # connection -> when it was taken
        self.live_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: this client is told nothing
            return
        with self.live_lock:
            self.live[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: Any) -> None:
        with self.live_lock:
            self.live.pop(request, None)
        self.slots.release()

    def service_actions(self) -> None:
        """Between accepts (serve_forever's loop, every half second at most): a
        connection past CLIENT_DEADLINE is shut down, which ends its thread's read
        or write at once. Here, not a timer per connection: no thread more."""
        super().service_actions()
        cut = time.monotonic() - CLIENT_DEADLINE
        with self.live_lock:
            late = [s for s, t in self.live.items() if t < cut]
        for s in late:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve(host: str, port: int, app: Any) -> tuple[WSGIServer, threading.Thread]:
    """Bind host:port (IPv4 or IPv6, as the host resolves) and serve app in a daemon
    thread; OSError when the address cannot be bound."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    cls = type("_MetricsServer", (_Server,), {"address_family": family})
    httpd: WSGIServer = make_server(host, port, app, cls, handler_class=_Handler)
    t = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
    t.start()
    return httpd, t
