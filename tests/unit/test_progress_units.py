"""dedupd.progress: what a TerminalProgress records (what its display draws)."""

from __future__ import annotations

import sys
import threading

from dedupd import progress
from dedupd.progress import NO_PROGRESS, PhaseState, TerminalProgress, open_progress


def test_not_a_terminal_means_no_progress(monkeypatch):
    monkeypatch.setattr(sys, "stderr", open("/dev/null", "w"))  # noqa: SIM115
    p = open_progress(None)
    assert p is NO_PROGRESS and not p
    assert isinstance(open_progress(True), TerminalProgress)
    assert open_progress(False) is NO_PROGRESS


def test_phases_counts_totals_and_eta():
    p = TerminalProgress("files", delay=3600)
    p.phase("walk")
    for n in (2000, 4000):
        p.update(n, note="1.0 MiB")
    walk = p.phases["walk"]
    assert (walk.files, walk.files_total, walk.note, walk.eta()) == (4000, None, "1.0 MiB", None)
    p.phase("hash", 100, None)
    assert walk.t_end is not None and p.current is p.phases["hash"]
    hashed = p.phases["hash"]
    hashed.t0 -= 10.0  # 10 s into the phase, a quarter done: 30 s left
    p.update(25, 1000)
    assert abs((hashed.eta() or 0) - 30.0) < 0.5
    p.phase("copy", 10, 4000)  # bytes decide the ETA when their total is known
    copy = p.phases["copy"]
    copy.t0 -= 10.0
    for _ in range(5):
        p.advance(1, 200)
    assert (copy.files, copy.nbytes) == (5, 1000)
    assert abs((copy.eta() or 0) - 30.0) < 0.5


def test_callback_form_and_threads():
    p = TerminalProgress("chunks", delay=3600)
    p("walk", 10, 0)
    p("walk", 20, 0)
    p("hash", 3, 9)
    assert [(ph.name, ph.files, ph.files_total) for ph in p.phases.values()] == [
        ("walk", 20, None), ("hash", 3, 9)]
    p.phase("upload")
    threads = [threading.Thread(target=lambda: [p.advance(1, 10) for _ in range(1000)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (p.current.files, p.current.nbytes) == (4000, 40000)  # type: ignore[union-attr]


def test_no_display_before_the_delay(monkeypatch):
    monkeypatch.setenv("DEDUPD_PROGRESS_DELAY", "3600")
    with TerminalProgress() as p:
        p.phase("walk")
    assert p.display is None and progress._delay() == 3600
    monkeypatch.setenv("DEDUPD_PROGRESS_DELAY", "soon")
    assert progress._delay() == progress.DELAY
    assert PhaseState("x", "files").eta() is None
