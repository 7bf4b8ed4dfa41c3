"""Pure parts of the daemon: schedules, watchdog interval, status board, access levels."""

from __future__ import annotations

import datetime as dt
import os
import socket
import time

import pytest

from dedupd.control import Access, ControlServer, Peer
from dedupd.errors import ConfigError
from dedupd.notify import Notifier, watchdog_interval
from dedupd.proc_priority import ioprio_value
from dedupd.scheduler import parse_schedule
from dedupd.status import StatusBoard, WorkerStatus


def test_parse_schedules():
    assert parse_schedule("every 6h").interval == 6 * 3600
    assert parse_schedule("Every  30m").interval == 1800
    assert parse_schedule("hourly").interval == 3600
    d = parse_schedule("daily 03:00")
    assert (d.hour, d.minute, d.interval) == (3, 0, None)
    for bad in ("sometimes", "daily 25:00", "every 5s", "every h", "daily 3"):
        with pytest.raises(ConfigError) as e:
            parse_schedule(bad, "backups.x.schedule", "f.toml")
        assert "backups.x.schedule" in str(e.value) and e.value.exit_code == 78


def test_daily_next_after_is_the_next_wall_clock_time():
    s = parse_schedule("daily 03:00")
    base = dt.datetime(2026, 3, 10, 2, 59).timestamp()
    assert dt.datetime.fromtimestamp(s.next_after(base)) == dt.datetime(2026, 3, 10, 3, 0)
    at = dt.datetime(2026, 3, 10, 3, 0).timestamp()
    assert dt.datetime.fromtimestamp(s.next_after(at)) == dt.datetime(2026, 3, 11, 3, 0)
    assert parse_schedule("every 2h").next_after(100.0) == 100.0 + 7200


def test_watchdog_interval():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None


def test_notifier_datagrams(tmp_path):
    path = str(tmp_path / "n")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    n = Notifier(path)
    assert n.ready("all good") and n.status("a\nb") and n.watchdog()
    assert s.recv(100) == b"READY=1\nSTATUS=all good"
    assert s.recv(100) == b"STATUS=a b"
    assert s.recv(100) == b"WATCHDOG=1"
    assert Notifier("").send(READY=1) is False  # no systemd: a silent no-op
    assert Notifier(str(tmp_path / "gone")).send(READY=1) is False  # never raises
    n.close()
    s.close()


def test_access_levels():
    a = Access(socket_gid=1001, admin_gid=1002, owner_uid=0)
    assert a.level(Peer(1, 0, 0, frozenset({0}))) == "admin"
    assert a.level(Peer(1, 500, 500, frozenset({500, 1001}))) == "read"
    assert a.level(Peer(1, 500, 500, frozenset({1001, 1002}))) == "admin"
    assert a.level(Peer(1, 500, 500, frozenset({500}))) == "none"
    assert Access(None, None, owner_uid=0).level(Peer(1, 500, 1001, frozenset({1001}))) == "none"


def test_dispatch_refuses_mutation_for_readers():
    calls = []
    srv = ControlServer(lambda c, v, r: calls.append((c, v)) or {"x": 1},
                        Access(None, None, owner_uid=0))
    peer = Peer(1, 500, 500, frozenset())
    assert srv.dispatch(b'{"cmd":"pause"}', peer, "read", None)["code"] == "EPERM"
    assert srv.dispatch(b'{"cmd":"status"}', peer, "read", "vol") == {"ok": True, "x": 1}
    assert calls == [("status", "vol")]
    assert srv.dispatch(b"\xff", peer, "read", None)["ok"] is False


def test_status_board_counters_and_summary():
    b = StatusBoard()
    w = WorkerStatus("photos", "btrfs", "/p", "apply")
    b.workers["photos"] = w
    w.start_pass()
    w.record_step("scanning", "2000 files", {"files_new": 2000})
    time.sleep(0.01)
    w.record_step("scanning", "4000 files", {"files_new": 4000})
    assert w.as_json(False)["rates"]["files_per_s"] > 0
    w.finish_pass({"files_new": 4000, "groups": 3}, 1234, ok=True)
    w.start_pass()
    w.record_step("hashing", "size 10", {"files_unchanged": 10})
    doc = b.snapshot()
    assert doc["counters"] == {"files_new": 4000, "groups": 3, "files_unchanged": 10}
    assert doc["bytes_reclaimed"] == 1234 and doc["volumes"]["photos"]["state"] == "hashing"
    assert "photos hashing" in b.summary()
    assert b.stats("photos")["volumes"]["photos"]["passes_completed"] == 1


def test_ioprio_encoding():
    assert ioprio_value("idle") == 3 << 13
    assert ioprio_value("best-effort", 7) == (2 << 13) | 7


def _job(name: str = "j", schedule: str = "every 1h"):
    from dedupd.config import BackupConfig, TargetConfig

    return BackupConfig(name=name, dataset="pool/data", target=TargetConfig("s3", bucket="b"),
                        schedule=schedule)


def test_scheduler_runs_the_job_body_in_a_thread():
    import asyncio
    import threading

    from dedupd import scheduler as S
    from dedupd.config import Config

    calls = []

    def body(cfg, job, store, dry_run=False):
        calls.append((cfg.source, job.name, store, dry_run, threading.current_thread().name))
        if job.name == "bad":
            raise RuntimeError("target unreachable")
        return "2 chunks"

    board = StatusBoard()
    cfg = Config(source="t.toml", backups={"j": _job(), "bad": _job("bad")})

    async def go():
        sch = S.BackupScheduler(board, "STORE", True, lambda: cfg,  # type: ignore[arg-type]
                                body)
        sch.update(cfg.backups)
        assert board.jobs["j"].next_run_at == pytest.approx(time.time() + 3600, abs=5)
        loop_task = asyncio.create_task(sch._loop(_job(), S.Schedule("t", interval=0.1),
                                                   time.time() + 0.1))
        deadline = time.monotonic() + 20  # two runs 0.1 s apart, however loaded the box
        while sum(c[1] == "j" for c in calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await sch._run(_job("bad"), board.jobs["bad"])
        assert await sch.stop(1.0)
        loop_task.cancel()

    asyncio.run(go())
    ok = [c for c in calls if c[1] == "j"]
    assert len(ok) >= 2 and all(c[0] == "t.toml" and c[2] == "STORE" and c[3] for c in ok)
    assert all(c[4] != threading.current_thread().name for c in calls)  # never on the loop
    assert board.jobs["j"].runs >= 2 and board.jobs["j"].last_result == "2 chunks"
    assert board.jobs["bad"].failures == 1 and "unreachable" in board.jobs["bad"].last_result
    assert board.errors[-1]["where"] == "backup bad"
