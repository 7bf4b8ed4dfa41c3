"""dedupd.commands.status_table: a StatusBoard's document as tables."""

from __future__ import annotations

import io
import time

from rich.console import Console

from dedupd.commands.status_table import show
from dedupd.status import JobStatus, StatusBoard, WorkerStatus


def test_jobs_errors_failures_and_a_pass_under_way():
    b = StatusBoard()
    b.state = "running"
    w = b.workers["pool"] = WorkerStatus("pool", "pool", "/mnt/pool", "apply")
    w.start_pass()
    w.finish_pass({"files_seen": 7, "hits": 3}, 3 * 1024**2, ok=False)
    w.start_pass()
    w.record_step("hashing", "hashing 12 candidates", {"files_seen": 5})
    w.paused = True
    b.jobs["nightly"] = JobStatus("nightly", "daily 03:00", next_run_at=time.time() + 60,
                                  last_result="failed: no credentials", runs=2, failures=1)
    b.error("volume pool", "Permission denied", "/mnt/pool/x")
    out = io.StringIO()
    show(b.snapshot(), Console(file=out, width=140, color_system=None))
    text = out.getvalue()
    row = next(x for x in text.splitlines() if x.startswith("│ pool"))
    assert [c.strip() for c in row.strip("│").split("│")][:4] == [
        "pool", "paused", "0/2 done, 1 failed", "12 seen"]
    assert "3 deduped" in text and "3.0 MiB" in text and "running for 0s" in text
    assert "│ nightly │ daily 03:00 │ idle" in text and "failed: no credentials" in text
    assert "2 (1 failed)" in text
    assert "volume pool │ /mnt/pool/x │ Permission denied" in text
