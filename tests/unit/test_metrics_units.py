"""[daemon] metrics_address validation and the metric families of a status document."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dedupd import config, metrics
from dedupd.errors import ConfigError


@pytest.mark.parametrize("value, expect", [
    ("", ""), ("127.0.0.1:9577", "127.0.0.1:9577"), ("[::1]:9577", "[::1]:9577"),
    ("localhost:1", "localhost:1"), (" 0.0.0.0:65535 ", "0.0.0.0:65535"),
])
def test_metrics_address_accepted(tmp_path, value, expect):
    p = tmp_path / "c.toml"
    p.write_text(f'[daemon]\nmetrics_address = "{value}"\n')
    assert config.load(p).daemon.metrics_address == expect


@pytest.mark.parametrize("value, problem", [
    ("9577", "HOST:PORT"), ("127.0.0.1", "HOST:PORT"), ("127.0.0.1:0", "port"),
    ("127.0.0.1:65536", "port"), ("127.0.0.1:http", "port"), (":9577", "HOST:PORT"),
    ("::1:9577", "brackets"), ("a b:9577", "HOST:PORT"),
])
def test_metrics_address_rejected(tmp_path, value, problem):
    p = tmp_path / "c.toml"
    p.write_text(f'[daemon]\nmetrics_address = "{value}"\n')
    with pytest.raises(ConfigError) as e:
        config.load(p)
    assert e.value.key == "daemon.metrics_address" and problem in e.value.problem
    assert e.value.exit_code == 78


def _volume(state: str, **counters: int) -> dict:
    return {"name": "x", "state": state, "paused": False, "bytes_reclaimed": 10,
            "passes": {"completed": 2, "failed": 1}, "last_pass_seconds": 1.5,
            "last_pass_finished_at": 1000.0, "counters": counters}


def test_families_of_a_status_document_parse_back():
    doc = {"version": "9.9", "started_at": 500.0,
           "last_errors": [{"time": 700.0}, {"time": 900.0}],
           "volumes": {"a": _volume("hashing", files_seen=5, **{"skips_vanished": 1}),
                       "b": _volume("idle", files_seen=7)},
           "backups": {"j": {"runs": 3, "failures": 1}}}
    facts = [metrics.BackupFacts("j", 1000.0, 99, None),
             metrics.BackupFacts("never", None, None, 950.0)]
    text = metrics.text(metrics.families(doc, facts, now=1600.0))
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(text) for s in f.samples}
    assert got[("dedupd_files_seen_total", (("volume", "a"),))] == 5
    assert got[("dedupd_files_seen_total", (("volume", "b"),))] == 7
    assert got[("dedupd_skips_vanished_total", (("volume", "a"),))] == 1
    assert got[("dedupd_volume_state", (("state", "hashing"), ("volume", "a")))] == 1
    assert got[("dedupd_volume_state", (("state", "idle"), ("volume", "a")))] == 0
    assert got[("dedupd_passes_total", (("result", "failed"), ("volume", "b")))] == 1
    assert got[("dedupd_last_error_timestamp_seconds", ())] == 900
    assert got[("dedupd_info", (("version", "9.9"),))] == 1
    assert got[("dedupd_backup_age_seconds", (("job", "j"),))] == 600
    assert got[("dedupd_backup_last_success_timestamp_seconds", (("job", "never"),))] == 0
    assert ("dedupd_backup_age_seconds", (("job", "never"),)) not in got
    assert got[("dedupd_backup_last_failure_timestamp_seconds", (("job", "never"),))] == 950
    assert got[("dedupd_backup_runs_total", (("job", "j"), ("result", "ok")))] == 2
    # no daemon: up 0 and the index's metrics only
    down = metrics.text(metrics.families(None, facts, now=1600.0))
    names = {f.name for f in text_string_to_metric_families(down)}
    assert "dedupd_up" in names and "dedupd_backup_age_seconds" in names
    assert not any(n.startswith(("dedupd_files_seen", "dedupd_volume")) for n in names)
