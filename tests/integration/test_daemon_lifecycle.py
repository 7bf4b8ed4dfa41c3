"""The real daemon under a real NOTIFY_SOCKET: READY, WATCHDOG, SIGHUP reload, SIGTERM stop."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.daemon import ENTRY, REPO, write_config
from tests.fixtures.procs import children

pytestmark = pytest.mark.integration


def make_tree(root: Path, n: int, distinct: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i:05d}").write_bytes(f"content {i % distinct}\n".encode() * 10)
    return root


def test_ready_only_after_sockets_exist_then_status(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 20)
    dp = dedupd_daemon({"one": {"path": str(vol)}}, ready=False)
    _, _, fields = dp.notify.wait_for("READY", "1")
    # READY arrived: the sockets must already be there and answering.
    assert stat.S_ISSOCK(os.stat(dp.socket).st_mode)
    assert stat.S_ISSOCK(os.stat(dp.runtime / "one.sock").st_mode)
    assert "STATUS" in fields and "one" in fields["STATUS"]
    doc = dp.request("status")
    assert doc["pid"] == dp.proc.pid
    assert set(doc["volumes"]) == {"one"}
    # the volume socket answers for its own volume by default
    vdoc = dp.request("status", sock=dp.runtime / "one.sock")
    assert set(vdoc["volumes"]) == {"one"}
    done = dp.wait_until(lambda d: d["volumes"]["one"]["passes"]["completed"] >= 1)
    c = done["volumes"]["one"]["counters"]
    assert c["files_seen"] == 20 and c["groups"] == 5
    assert done["volumes"]["one"]["state"] == "idle"
    assert done["next_events"] and "one" in done["next_events"][0]["what"]
    # socket directory and socket modes (no dedupd group here: root only)
    assert stat.S_IMODE(os.stat(dp.runtime).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(dp.socket).st_mode) == 0o660
    assert dp.stop() == 0


def test_watchdog_pings_at_half_the_interval(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 10)
    dp = dedupd_daemon({"one": {"path": str(vol)}}, env={"WATCHDOG_USEC": "1000000"})
    first, _, _ = dp.notify.wait_for("WATCHDOG", "1")
    time.sleep(3.2)
    pings = [t for t, f in dp.notify.notes[first:] if f.get("WATCHDOG") == "1"]
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert len(pings) >= 6, pings
    # every 0.5 s; systemd would kill us after 1 s without one
    assert max(gaps) < 0.8, gaps
    assert sum(gaps) / len(gaps) == pytest.approx(0.5, abs=0.1)
    assert dp.stop() == 0


def test_no_watchdog_pings_for_another_pid(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 5)
    dp = dedupd_daemon({"one": {"path": str(vol)}},
                       env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    time.sleep(1.0)
    assert not [f for _, f in dp.notify.notes if "WATCHDOG" in f]
    assert dp.stop() == 0


def test_sighup_reload_keeps_state_and_adds_volume(dedupd_daemon, daemon_base):
    v1 = make_tree(daemon_base / "v1", 30)
    v2 = make_tree(daemon_base / "v2", 12, distinct=3)
    dp = dedupd_daemon({"one": {"path": str(v1)}})
    before = dp.wait_until(lambda d: d["volumes"]["one"]["passes"]["completed"] >= 1)
    mark = len(dp.notify.notes)
    write_config(daemon_base, {"one": {"path": str(v1)}, "two": {"path": str(v2)}})
    dp.proc.send_signal(signal.SIGHUP)
    i, _, f = dp.notify.wait_for("RELOADING", "1", after=mark)
    assert "MONOTONIC_USEC" in f
    dp.notify.wait_for("READY", "1", after=i)
    after = dp.wait_until(lambda d: "two" in d["volumes"]
                          and d["volumes"]["two"]["passes"]["completed"] >= 1)
    assert after["pid"] == before["pid"] and after["reloads"] == 1
    assert after["uptime"] > before["uptime"]
    # state of the old volume survived the reload
    assert after["volumes"]["one"]["passes"]["completed"] >= 1
    assert after["volumes"]["one"]["counters"]["files_seen"] >= 30
    assert after["volumes"]["two"]["counters"]["groups"] == 3
    assert (dp.runtime / "two.sock").exists()

    # a broken config on reload: keep running the previous one, READY again
    mark = len(dp.notify.notes)
    dp.cfg.write_text("[daemon]\nnot_a_key = 1\n")
    dp.proc.send_signal(signal.SIGHUP)
    i, _, _ = dp.notify.wait_for("RELOADING", "1", after=mark)
    dp.notify.wait_for("READY", "1", after=i)
    doc = dp.request("status")
    assert set(doc["volumes"]) == {"one", "two"} and doc["reloads"] == 1
    assert any(e["where"] == "reload" and "not_a_key" in e["error"] for e in doc["last_errors"])

    # a volume dropped from the config leaves service and loses its socket
    mark = len(dp.notify.notes)
    write_config(daemon_base, {"two": {"path": str(v2)}})
    dp.proc.send_signal(signal.SIGHUP)
    i, _, _ = dp.notify.wait_for("RELOADING", "1", after=mark)
    dp.notify.wait_for("READY", "1", after=i)
    doc = dp.wait_until(lambda d: set(d["volumes"]) == {"two"})
    assert doc["reloads"] == 2 and not (dp.runtime / "one.sock").exists()
    assert dp.stop() == 0


def test_sigterm_graceful_stop(dedupd_daemon, fast_dir):
    vol = make_tree(fast_dir / "v1", 3000, distinct=1000)
    dp = dedupd_daemon({"one": {"path": str(vol)}})
    dp.wait_until(lambda d: d["volumes"]["one"]["steps"] >= 1, every=0.01)
    mark = len(dp.notify.notes)
    t0 = time.monotonic()
    rc = dp.stop(signal.SIGTERM)
    assert rc == 0, dp.log_text()
    assert time.monotonic() - t0 < 10
    _, _, f = dp.notify.wait_for("STOPPING", "1", after=mark, timeout=1)
    assert "STATUS" in f
    assert not dp.socket.exists() and not (dp.runtime / "one.sock").exists()
    assert not (dp.runtime / "dedupd.pid").exists()
    assert "stopped" in dp.log_text()


def nice_of(path: str) -> int:
    return int(Path(path).read_text().rsplit(")", 1)[1].split()[16])


def test_priority_applied(dedupd_daemon, daemon_base):
    """The step process at nice 19 / idle I/O; the event loop back at nice 0."""
    vol = make_tree(daemon_base / "v1", 5)
    dp = dedupd_daemon({"one": {"path": str(vol)}})
    dp.wait_until(lambda d: d["volumes"]["one"]["passes"]["completed"] == 1)
    pid = dp.proc.pid
    assert nice_of(f"/proc/{pid}/stat") == 0  # the loop thread answers status promptly
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    assert all(nice_of(f"/proc/{pid}/task/{t}/stat") == 19 for t in tids)
    (child,) = children(pid)
    assert nice_of(f"/proc/{child}/stat") == 19
    out = subprocess.run(["ionice", "-p", str(child)], capture_output=True, text=True)
    assert out.stdout.strip() == "idle"
    assert "loop_thread_nice': 0" in dp.log_text()
    assert dp.stop() == 0
    assert not Path(f"/proc/{child}").exists()  # the step process went with it


def test_step_process_killed_is_replaced(dedupd_daemon, fast_dir):
    vol = make_tree(fast_dir / "v1", 20000, distinct=5000)
    dp = dedupd_daemon({"one": {"path": str(vol)}})
    dp.wait_until(lambda d: d["volumes"]["one"]["steps"] >= 1, every=0.01)
    (child,) = children(dp.proc.pid)
    os.kill(child, signal.SIGKILL)
    doc = dp.wait_until(lambda d: d["volumes"]["one"]["passes"]["failed"] == 1)
    assert "died" in doc["volumes"]["one"]["doing"]
    deadline = time.monotonic() + 10
    while "step process restarted" not in dp.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    (new_child,) = children(dp.proc.pid)
    assert new_child != child
    dp.request("rescan", volume="one")  # do not wait for the retry backoff
    doc = dp.wait_until(lambda d: d["volumes"]["one"]["passes"]["completed"] == 1)
    assert doc["volumes"]["one"]["counters"]["files_seen"] == 20000
    assert dp.stop() == 0


def test_one_daemon_per_runtime_dir(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 5)
    first = dedupd_daemon({"one": {"path": str(vol)}})
    second = dedupd_daemon({"one": {"path": str(vol)}}, ready=False)
    assert second.proc.wait(30) == 75
    assert f"pid {first.proc.pid}" in second.log_text()
    _, _, f = second.notify.wait_for("EXIT_STATUS", "75", timeout=1)
    assert first.request("ping")["pid"] == first.proc.pid  # the first one is unharmed
    assert first.stop() == 0


def test_config_error_exits_78(daemon_base):
    cfg = daemon_base / "bad.toml"
    cfg.write_text(f'[daemon]\nruntime_dir = "{daemon_base}/run"\n[backups.x]\n'
                   'dataset = "p/d"\nschedule = "sometimes"\n[backups.x.target]\n'
                   'kind = "s3"\nbucket = "b"\n')
    r = subprocess.run([sys.executable, str(ENTRY), "run", "-c", str(cfg)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert "backups.x.schedule" in r.stderr and "sometimes" in r.stderr


def test_detach_pidfile_and_stop(daemon_base):
    vol = make_tree(daemon_base / "v1", 10)
    cfg = write_config(daemon_base, {"one": {"path": str(vol)}})
    pidfile = daemon_base / "d.pid"
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    r = subprocess.run([sys.executable, str(ENTRY), "run", "--detach", "-c", str(cfg),
                        "--pidfile", str(pidfile), "--log-file", str(daemon_base / "d.log")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text())
    try:
        assert os.getsid(pid) != os.getsid(0)  # a new session: detached from our terminal
        assert os.getppid() != pid and Path(f"/proc/{pid}").exists()
        from dedupd.control import ControlClient
        c = ControlClient(daemon_base / "run" / "dedupd.sock")
        assert c.request("ping")["pid"] == pid
        c.close()
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    assert "stopped" in (daemon_base / "d.log").read_text()


def test_once_still_works(daemon_base):
    vol = make_tree(daemon_base / "v1", 10)
    cfg = write_config(daemon_base, {"one": {"path": str(vol)}})
    r = subprocess.run([sys.executable, str(ENTRY), "run", "--once", "--json", "-c", str(cfg)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert '"files_seen": 10' in r.stdout


def test_journald_prefixes_and_json_logs(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 10)
    dp = dedupd_daemon({"one": {"path": str(vol)}}, env={"JOURNAL_STREAM": "8:12345"})
    dp.wait_until(lambda d: d["volumes"]["one"]["passes"]["completed"] == 1)
    assert dp.stop() == 0
    lines = [x for x in dp.log_text().splitlines() if x]
    assert lines and all(x[:3] in ("<6>", "<4>", "<3>", "<7>") for x in lines), lines
    assert any(x.startswith("<6>dedupd.worker: volume one: pass 1 finished") for x in lines)


def test_log_json_events(dedupd_daemon, daemon_base):
    import json

    vol = make_tree(daemon_base / "v1", 10)
    dp = dedupd_daemon({"one": {"path": str(vol)}}, args=["--log-json"])
    dp.wait_until(lambda d: d["volumes"]["one"]["passes"]["completed"] == 1)
    assert dp.stop() == 0
    docs = [json.loads(x) for x in dp.log_text().splitlines() if x]
    done = [d for d in docs if d.get("event") == "pass_finished"]
    assert len(done) == 1 and done[0]["volume"] == "one"
    assert done[0]["counters"]["files_seen"] == 10
    assert any(d.get("event") == "scan_finished" and d["files_new"] == 10 for d in docs)


def _interrupted_op(daemon_base: Path):
    """A hardlink op killed mid-swap: journal PENDING (the linker writes no state
    between PENDING and DONE), its temporary link made."""
    from dedupd.dedup import journal as J
    from dedupd.index.store import Store

    vol = daemon_base / "v1"
    vol.mkdir()
    keep, dup, temp = vol / "keep", vol / "dup", vol / ".dup.dedupd-tmp"
    keep.write_bytes(b"same bytes\n" * 100)
    dup.write_bytes(b"same bytes\n" * 100)
    os.link(keep, temp)
    ks, ds = keep.stat(), dup.stat()
    store = Store(f"sqlite:///{daemon_base / 'index.db'}")
    jr = J.Journal(store)
    op = jr.begin(J.OpSpec("one", "hardlink", bytes(keep), bytes(dup), ks.st_dev, ks.st_ino,
                           ds.st_dev, ds.st_ino, ks.st_size, ds.st_mtime_ns,
                           temp_path=bytes(temp)))
    return vol, store, jr, op, (keep, dup, temp, ds)


def test_interrupted_operation_recovered_before_ready(dedupd_daemon, daemon_base):
    """Rolled back at startup, before READY=1: the temporary name is gone, files intact."""
    from dedupd.dedup import journal as J

    vol, store, jr, op, (keep, dup, temp, ds) = _interrupted_op(daemon_base)
    dp = dedupd_daemon({"one": {"path": str(vol)}}, ready=False)
    dp.notify.wait_for("READY", "1")
    assert not temp.exists()  # resolved before READY
    assert dup.stat().st_ino == ds.st_ino and dup.read_bytes() == keep.read_bytes()
    rec = jr.get(op)
    assert rec is not None and rec.state == J.ROLLED_BACK
    jr.close()
    store.close()
    assert dp.stop() == 0
    log = dp.log_text()
    assert log.index("recovery done: 1 unfinished operation(s) resolved") < log.index("ready")


def test_recovery_skips_a_volume_locked_by_another_pass(dedupd_daemon, daemon_base):
    """`run --once` holds the volume: the daemon must not take its op for an interrupted one."""
    from dedupd.dedup import journal as J
    from dedupd.dedup.lock import volume_lock

    vol, store, jr, op, (_, _, temp, _) = _interrupted_op(daemon_base)
    with volume_lock(os.fsencode(vol)):
        dp = dedupd_daemon({"one": {"path": str(vol)}}, ready=False)
        dp.notify.wait_for("READY", "1")
        assert temp.exists()
        rec = jr.get(op)
        assert rec is not None and rec.state == J.PENDING
    jr.close()
    store.close()
    assert dp.stop() == 0
    assert "volume one: not recovered now" in dp.log_text()


def test_step_overrunning_stop_timeout_is_killed(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 3)
    dp = dedupd_daemon({"slow": {"path": str(vol), "kind": "xfs"}},
                       daemon={"stop_timeout": 1.0},
                       env={"DEDUPD_TEST_SLOW_KIND": "xfs"})
    dp.wait_until(lambda d: d["volumes"]["slow"]["passes"]["started"] == 1)
    (child,) = children(dp.proc.pid)
    mark = len(dp.notify.notes)
    t0 = time.monotonic()
    rc = dp.stop(signal.SIGTERM, timeout=20)
    took = time.monotonic() - t0
    assert rc == 1, dp.log_text()  # not a clean stop, and it says so
    assert 0.9 < took < 8, took
    dp.notify.wait_for("STOPPING", "1", after=mark, timeout=1)
    assert "did not finish within 1s; killed it" in dp.log_text()
    assert not Path(f"/proc/{child}").exists()
    assert not dp.socket.exists()
