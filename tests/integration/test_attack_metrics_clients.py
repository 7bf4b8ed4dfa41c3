"""Idle connections to the metrics endpoint cannot grow the daemon.

`[daemon] metrics_address` is a TCP port: any local user may connect. The daemon
served it with prometheus_client's server, a thread per connection waiting for a
request without end: a user who opened connections and sent nothing added a
thread to the root daemon with each (tens of thousands in an hour, until memory
or the kernel's map count runs out and the daemon can start no thread of its own).
Now at most metrics_http.MAX_CLIENTS connections are served at once (more are
closed at once) and an idle one is dropped after IDLE_TIMEOUT.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from typing import Any

import pytest

from dedupd.metrics_http import MAX_CLIENTS
from tests.fixtures.attacker import User
from tests.integration.test_daemon_lifecycle import make_tree
from tests.integration.test_metrics import free_port, samples

pytestmark = pytest.mark.integration
OPEN = 4 * MAX_CLIENTS

# The attacker: OPEN connections that send nothing, held until stdin closes.
HOLD = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        continue
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
"""


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_idle_clients_of_the_metrics_port_add_no_threads(dedupd_daemon: Any, daemon_base: Any,
                                                         attacker: User) -> None:
    vol = make_tree(daemon_base / "v1", 8, distinct=2)
    port = free_port()
    dp = dedupd_daemon({"v": {"path": str(vol)}},
                       daemon={"metrics_address": f"127.0.0.1:{port}"})
    dp.wait_until(lambda d: d["volumes"]["v"]["passes"]["completed"] == 1)
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert samples(r.read().decode())[("dedupd_up", ())] == 1
    before = _threads(dp.proc.pid)
    user = subprocess.Popen(["setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}",
                             "--clear-groups", "--", "/usr/bin/python3", "-c", HOLD, str(port),
                             str(OPEN)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert user.stdout is not None and user.stdin is not None
        opened = int(user.stdout.readline())
        assert opened >= MAX_CLIENTS, opened  # the queue took them: the daemon saw them
        grown = _threads(dp.proc.pid) - before
        assert grown <= MAX_CLIENTS, f"{opened} idle clients: {grown} more threads"
        doc = dp.wait_until(lambda d: d["state"] == "running")  # the daemon answers
        assert doc["volumes"]["v"]["passes"]["failed"] == 0
    finally:
        if user.stdin is not None:
            user.stdin.close()
        user.wait(30)
    dp.wait_until(lambda d: _threads(dp.proc.pid) <= before + 1, timeout=30)
    with urllib.request.urlopen(url, timeout=10) as r:  # served again
        assert samples(r.read().decode())[("dedupd_up", ())] == 1
    assert dp.stop() == 0
