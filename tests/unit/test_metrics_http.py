"""The metrics endpoint's bound on its clients holds against slow ones too: a client
that trickles its request (a byte every fraction of IDLE_TIMEOUT) is never idle,
so MAX_CLIENTS of them held every slot for as long as they liked and each scrape
was closed unanswered. CLIENT_DEADLINE ends any connection at last."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dedupd import metrics_http


def _app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"up 1\n"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(metrics_http, "CLIENT_DEADLINE", 1.0, raising=False)
    httpd, t = metrics_http.serve("127.0.0.1", 0, _app)
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(10)


def _trickle(port: int, stop: threading.Event, cut: list[bool],
             connected: threading.Semaphore) -> None:
    """A request sent a byte every 0.2 s, never finished, until the server cuts it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        connected.release()
        while not stop.is_set():
            try:
                s.send(b"G")
                s.settimeout(0.2)
                if s.recv(1) == b"":  # shut down by the server
                    cut.append(True)
                    return
            except TimeoutError:
                continue
            except OSError:
                cut.append(True)
                return


def test_trickling_clients_do_not_keep_scrapes_out(server: int) -> None:
    stop, connected = threading.Event(), threading.Semaphore(0)
    cut: list[bool] = []
    slow = [threading.Thread(target=_trickle, args=(server, stop, cut, connected), daemon=True)
            for _ in range(metrics_http.MAX_CLIENTS)]
    for t in slow:
        t.start()
    try:
        for _ in slow:  # every slot taken before the first scrape
            assert connected.acquire(timeout=10)
        deadline, got = time.monotonic() + 20, None
        while got is None and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server}/", timeout=5) as r:
                    got = r.read()
            except OSError:
                continue
        assert got == b"up 1\n", f"no scrape served in 20 s; {len(cut)} slow clients cut"
        assert len(cut) >= 1
    finally:
        stop.set()
        for t in slow:
            t.join(10)
