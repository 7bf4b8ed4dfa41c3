"""Prometheus metrics: a real daemon scraped over HTTP, and `dedupd metrics` once."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dedupd.index import backups as rows
from dedupd.index.store import Store
from tests.fixtures.daemon import REPO
from tests.integration.test_daemon_lifecycle import make_tree

pytestmark = pytest.mark.integration

BACKUP_JOB = """
[backups.tank]
dataset = "tank/data"
schedule = "every 100d"
[backups.tank.target]
kind = "rclone"
remote = "nowhere"
path = "bk"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, through prometheus_client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def complete_backup(db: Path, size: int) -> float:
    """A finished backup of job tank in the index (as jobs.run_job leaves it)."""
    store = Store(f"sqlite:///{db}")
    try:
        rows.start(store, id="b1", job="tank", dataset="tank/data", snapshot="dedupd-1",
                   guid=42, base_guid=None, created_snapshot=True)
        rows.finish(store, "b1", "complete", chunks=3, total_size=size)
        return float(rows.get(store, "b1").finished)  # type: ignore[union-attr]
    finally:
        store.close()


def test_daemon_serves_metrics_after_a_pass(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 40, distinct=4)
    port = free_port()
    finished = complete_backup(daemon_base / "index.db", 12345)
    dp = dedupd_daemon({"v": {"path": str(vol), "mode": "apply"}},
                       daemon={"metrics_address": f"127.0.0.1:{port}"}, extra=BACKUP_JOB)
    doc = dp.wait_until(lambda d: d["volumes"]["v"]["passes"]["completed"] == 1)
    v = doc["volumes"]["v"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    got = samples(text)
    vl = (("volume", "v"),)
    assert got[("dedupd_up", ())] == 1
    assert got[("dedupd_files_seen_total", vl)] == v["counters"]["files_seen"] == 40
    assert got[("dedupd_hits_total", vl)] == v["counters"]["hits"] == 36
    assert got[("dedupd_bytes_reclaimed_total", vl)] == v["bytes_reclaimed"] > 0
    assert got[("dedupd_passes_total", (("result", "completed"), ("volume", "v")))] == 1
    assert got[("dedupd_last_pass_duration_seconds", vl)] == v["last_pass_seconds"] > 0
    assert got[("dedupd_volume_state", (("state", "idle"), ("volume", "v")))] == 1
    assert got[("dedupd_start_time_seconds", ())] == pytest.approx(doc["started_at"])
    job = (("job", "tank"),)
    assert got[("dedupd_backup_last_size_bytes", job)] == 12345
    assert got[("dedupd_backup_last_success_timestamp_seconds", job)] == pytest.approx(finished)
    assert 0 <= got[("dedupd_backup_age_seconds", job)] < time.time() - finished + 5
    assert got[("dedupd_backup_runs_total", (("job", "tank"), ("result", "failed")))] == 0
    assert got[("dedupd_last_error_timestamp_seconds", ())] == 0
    assert dp.stop() == 0
    with pytest.raises(OSError):  # the endpoint went away with the daemon
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_metrics_address_in_use_is_a_clear_startup_error(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 4)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        dp = dedupd_daemon({"v": {"path": str(vol)}}, ready=False,
                           daemon={"metrics_address": f"127.0.0.1:{port}"})
        rc = dp.proc.wait(60)
    assert rc == 1
    log = dp.log_text()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in log and "Traceback" not in log


def run_metrics(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dedupd", "metrics", "-c", str(cfg), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_metrics_command_with_and_without_daemon(dedupd_daemon, daemon_base):
    vol = make_tree(daemon_base / "v1", 10, distinct=2)
    complete_backup(daemon_base / "index.db", 777)
    dp = dedupd_daemon({"v": {"path": str(vol)}}, extra=BACKUP_JOB)
    doc = dp.wait_until(lambda d: d["volumes"]["v"]["passes"]["completed"] == 1)
    r = run_metrics(dp.cfg)
    assert r.returncode == 0, r.stderr
    got = samples(r.stdout)
    assert got[("dedupd_up", ())] == 1
    assert got[("dedupd_files_seen_total", (("volume", "v"),))] == 10
    assert got[("dedupd_tries_total", (("volume", "v"),))] == doc["volumes"]["v"]["counters"][
        "tries"] == 8
    assert got[("dedupd_backup_last_size_bytes", (("job", "tank"),))] == 777
    assert dp.stop() == 0
    # no daemon: the index's metrics, dedupd_up 0, a note, exit 0; -o writes atomically
    out = daemon_base / "textfile" / "dedupd.prom"
    out.parent.mkdir()
    r = run_metrics(dp.cfg, "-o", str(out))
    assert r.returncode == 0 and "no daemon listening" in r.stderr, r.stderr
    assert r.stdout == ""
    got = samples(out.read_text())
    assert got[("dedupd_up", ())] == 0
    assert got[("dedupd_backup_last_size_bytes", (("job", "tank"),))] == 777
    assert not any(name.startswith("dedupd_files_seen") for name, _ in got)
    assert [p.name for p in out.parent.iterdir()] == ["dedupd.prom"]


def test_every_metric_is_documented(dedupd_daemon, daemon_base):
    """Each metric family a daemon exposes is described in docs/status.md's Metrics
    section (volume counters through the Counters table)."""
    vol = make_tree(daemon_base / "v1", 6, distinct=2)
    complete_backup(daemon_base / "index.db", 1)
    dp = dedupd_daemon({"v": {"path": str(vol)}}, extra=BACKUP_JOB)
    dp.wait_until(lambda d: d["volumes"]["v"]["passes"]["completed"] == 1)
    r = run_metrics(dp.cfg)
    assert r.returncode == 0, r.stderr
    docs = (REPO / "docs" / "status.md").read_text()
    metrics_doc = docs[docs.index("## Metrics"):]
    table = docs[docs.index("## Counters"):docs.index("## Metrics")]
    counters = set(re.findall(r"`([a-z_]+)", table))
    for fam in text_string_to_metric_families(r.stdout):
        if f"`{fam.name}" in metrics_doc:
            continue
        counter = fam.name.removeprefix("dedupd_")
        if counter.startswith("skips_"):
            counter = "skips_"
        assert fam.type == "counter" and counter in counters, f"{fam.name} undocumented"
    assert dp.stop() == 0
