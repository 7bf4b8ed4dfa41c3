"""A reload re-reads and re-checks the config off the event loop, and refuses
what check-config refuses, keeping the running config."""

from __future__ import annotations

import os
import signal
import threading
import time

from dedupd.control import ControlClient
from tests.fixtures.daemon import write_config
from tests.integration.test_daemon_lifecycle import make_tree


def test_status_answers_while_a_reload_reads_a_slow_config(dedupd_daemon, daemon_base):
    """The config file is a FIFO nobody writes yet: reading it blocks like a hung
    mount would. Status must still answer, and the reload finish once it can read."""
    v1 = make_tree(daemon_base / "v1", 5)
    dp = dedupd_daemon({"one": {"path": str(v1)}})
    text = dp.cfg.read_text()
    dp.cfg.unlink()
    os.mkfifo(dp.cfg)
    mark = len(dp.notify.notes)
    dp.proc.send_signal(signal.SIGHUP)
    i, _, _ = dp.notify.wait_for("RELOADING", "1", after=mark)
    time.sleep(0.3)  # the reload is now blocked in open() of the FIFO
    t0 = time.monotonic()
    c = ControlClient(dp.socket, timeout=5.0)
    try:
        doc = c.request("status")
    finally:
        c.close()
    assert time.monotonic() - t0 < 2.0
    assert doc["state"] == "reloading"

    def feed() -> None:
        with open(dp.cfg, "w") as f:
            f.write(text)

    writer = threading.Thread(target=feed)
    writer.start()
    dp.notify.wait_for("READY", "1", after=i)
    writer.join(10)
    assert dp.request("status")["reloads"] == 1
    assert dp.stop() == 0


def test_reload_refuses_nan_and_a_missing_volume(dedupd_daemon, daemon_base):
    v1 = make_tree(daemon_base / "v1", 5)
    dp = dedupd_daemon({"one": {"path": str(v1)}})
    for bad, words in (({"pass_interval": float("nan")}, "finite number"),
                       ({}, "does not exist")):
        vols = {"one": {"path": str(v1)}}
        if not bad:
            vols["two"] = {"path": str(daemon_base / "gone")}
        write_config(daemon_base, vols, daemon=bad or None)
        mark = len(dp.notify.notes)
        dp.proc.send_signal(signal.SIGHUP)
        i, _, _ = dp.notify.wait_for("RELOADING", "1", after=mark)
        dp.notify.wait_for("READY", "1", after=i)
        doc = dp.request("status")  # valid JSON: no NaN reached the socket
        assert set(doc["volumes"]) == {"one"} and doc["reloads"] == 0
        assert any(e["where"] == "reload" and words in e["error"]
                   for e in doc["last_errors"]), doc["last_errors"]
    assert dp.stop() == 0
