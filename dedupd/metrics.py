"""Prometheus metrics: the daemon's status document and the index's backup rows.

One builder (`families`) turns a status document (StatusBoard.snapshot(), the
same as `dedupd status --json`) and the backup facts read from the index into
metric families. The daemon serves them over HTTP on `[daemon]
metrics_address` (MetricsServer); `dedupd metrics` prints them once, for
node_exporter's textfile collector. Every metric is documented in
docs/status.md ("Metrics"); a name added here and not there fails a test.

Volume counters become `dedupd_<counter>_total{volume}`: they only grow while
the daemon runs and restart from zero with it, which is what Prometheus'
rate() expects of a counter.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dedupd.config import parse_host_port
from dedupd.index.store import Store

STATES = ("idle", "scanning", "hashing", "deduping")
_BAD = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class BackupFacts:
    """What the index knows of one backup job's runs."""

    job: str
    last_success_at: float | None  # when the newest complete backup finished
    last_size: int | None  # bytes stored by that backup (its chunks)
    last_failure_at: float | None  # when the newest failed or abandoned run ended


def backup_facts(store: Store, jobs: Iterable[str]) -> list[BackupFacts]:
    """The facts of each named job from the index's backup rows (docs/schema.md)."""
    from dedupd.index import backups as rows

    out = []
    for job in jobs:
        done = [r for r in rows.for_job(store, job) if r.finished is not None]
        ok = [r for r in done if r.state == "complete"]
        bad = [r for r in done if r.state in ("failed", "abandoned")]
        last = max(ok, key=lambda r: r.finished or 0.0) if ok else None
        out.append(BackupFacts(
            job, last.finished if last else None, last.total_size if last else None,
            max(r.finished or 0.0 for r in bad) if bad else None))
    return out


def families(doc: dict[str, Any] | None, backups: Sequence[BackupFacts],
             now: float | None = None) -> list[Metric]:
    """The metric families for a status document (None: no daemon answered)."""
    now = time.time() if now is None else now
    up = GaugeMetricFamily("dedupd_up", "1 when the daemon answered, else 0")
    up.add_metric([], 1.0 if doc is not None else 0.0)
    out: list[Metric] = [up]
    if doc is not None:
        out += _daemon(doc) + _volumes(doc["volumes"])
    out += _backups(backups, (doc or {}).get("backups", {}), now)
    return out


def _daemon(doc: dict[str, Any]) -> list[Metric]:
    info = GaugeMetricFamily("dedupd_info", "the daemon's version", labels=["version"])
    info.add_metric([str(doc["version"])], 1.0)
    start = GaugeMetricFamily("dedupd_start_time_seconds", "when the daemon started (Unix time)")
    start.add_metric([], float(doc["started_at"]))
    errs = [float(e["time"]) for e in doc.get("last_errors", [])]
    last_err = GaugeMetricFamily("dedupd_last_error_timestamp_seconds",
                                 "when the daemon last recorded an error (0: none since start)")
    last_err.add_metric([], max(errs, default=0.0))
    return [info, start, last_err]


def _volumes(vols: dict[str, Any]) -> list[Metric]:
    counters: dict[str, CounterMetricFamily] = {}
    reclaimed = CounterMetricFamily("dedupd_bytes_reclaimed", "bytes freed by dedupe",
                                    labels=["volume"])
    passes = CounterMetricFamily("dedupd_passes", "volume passes ended, by result",
                                 labels=["volume", "result"])
    duration = GaugeMetricFamily("dedupd_last_pass_duration_seconds",
                                 "how long the last finished pass took", labels=["volume"])
    finished = GaugeMetricFamily("dedupd_last_pass_finished_timestamp_seconds",
                                 "when the last pass ended (Unix time)", labels=["volume"])
    state = GaugeMetricFamily("dedupd_volume_state", "1 for the state the volume is in",
                              labels=["volume", "state"])
    paused = GaugeMetricFamily("dedupd_volume_paused", "1 while paused", labels=["volume"])
    for name, v in sorted(vols.items()):
        for key, value in sorted(v["counters"].items()):
            metric = "dedupd_" + _BAD.sub("_", key)
            fam = counters.get(metric)
            if fam is None:
                fam = counters[metric] = CounterMetricFamily(
                    metric, f"volume counter {key} (docs/status.md, Counters)",
                    labels=["volume"])
            fam.add_metric([name], float(value))
        reclaimed.add_metric([name], float(v["bytes_reclaimed"]))
        passes.add_metric([name, "completed"], float(v["passes"]["completed"]))
        passes.add_metric([name, "failed"], float(v["passes"]["failed"]))
        if v["last_pass_seconds"] is not None:
            duration.add_metric([name], float(v["last_pass_seconds"]))
            finished.add_metric([name], float(v["last_pass_finished_at"]))
        for s in STATES:
            state.add_metric([name, s], 1.0 if v["state"] == s else 0.0)
        paused.add_metric([name], 1.0 if v["paused"] else 0.0)
    return [*counters.values(), reclaimed, passes, duration, finished, state, paused]


def _backups(facts: Sequence[BackupFacts], jobs: dict[str, Any], now: float) -> list[Metric]:
    last_ok = GaugeMetricFamily("dedupd_backup_last_success_timestamp_seconds",
                                "when the job's newest complete backup finished (0: never)",
                                labels=["job"])
    age = GaugeMetricFamily("dedupd_backup_age_seconds",
                            "seconds since the job's newest complete backup finished",
                            labels=["job"])
    size = GaugeMetricFamily("dedupd_backup_last_size_bytes",
                             "bytes stored by the job's newest complete backup", labels=["job"])
    last_bad = GaugeMetricFamily("dedupd_backup_last_failure_timestamp_seconds",
                                 "when a run of the job last failed (0: never)", labels=["job"])
    runs = CounterMetricFamily("dedupd_backup_runs", "scheduled runs since the daemon started",
                               labels=["job", "result"])
    for f in facts:
        last_ok.add_metric([f.job], f.last_success_at or 0.0)
        if f.last_success_at is not None:
            age.add_metric([f.job], max(0.0, now - f.last_success_at))
            size.add_metric([f.job], float(f.last_size or 0))
        last_bad.add_metric([f.job], f.last_failure_at or 0.0)
    for name, j in sorted(jobs.items()):
        runs.add_metric([name, "ok"], float(j["runs"] - j["failures"]))
        runs.add_metric([name, "failed"], float(j["failures"]))
    return [last_ok, age, size, last_bad, runs]


class _Collector:
    """A registry collector that asks `source` for fresh families at every scrape."""

    def __init__(self, source: Callable[[], list[Metric]]) -> None:
        self.source = source

    def collect(self) -> list[Metric]:
        return self.source()


def registry(source: Callable[[], list[Metric]]) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(source))
    return reg


def text(fams: list[Metric]) -> str:
    """Prometheus text exposition format (what node_exporter's textfile collector reads)."""
    return generate_latest(registry(lambda: fams)).decode("utf-8")


class MetricsServer:
    """Serves a registry over HTTP in a thread of its own (prometheus_client's server).

    The source runs in that thread at each scrape: it must be thread-safe.
    """

    def __init__(self, address: str, source: Callable[[], list[Metric]]) -> None:
        self.host, self.port = parse_host_port(address)
        self.source = source
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        """Bind and serve (metrics_http: bounded threads, idle clients dropped);
        OSError when the address cannot be bound."""
        from prometheus_client import make_wsgi_app

        from dedupd.metrics_http import serve

        self._server, self._thread = serve(self.host, self.port,
                                           make_wsgi_app(registry(self.source)))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
