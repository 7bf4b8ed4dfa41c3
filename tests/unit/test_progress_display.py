"""dedupd.progress_term: what the display writes to a real pseudo-terminal."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.cells import cell_len

from dedupd import log
from dedupd.progress import NO_PROGRESS, TerminalProgress, open_progress
from dedupd.progress_term import Display
from tests.fixtures.tty import pseudo_terminal

SGR = re.compile(r"\x1b\[([0-9;]*)m")
CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@contextmanager
def pty(cols: int = 100) -> Iterator[tuple[TextIO, list[bytes]]]:
    """A terminal of cols columns: its writing end, and what it received (once
    the block is left)."""
    with pseudo_terminal(cols, 30) as (slave, got):
        stream = open(slave, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        try:
            yield stream, got
        finally:
            stream.close()  # flushed; pseudo_terminal closes the fd


def phases() -> TerminalProgress:
    p = TerminalProgress("files", delay=3600)
    p.phase("walk")
    p.update(40_000, note="400.0 MiB")
    p.phase("hash", 12_000, 4 * 1024**3)
    p.update(3_000, 1024**3)
    return p


def test_lines_above_the_display_and_nothing_left_behind(monkeypatch):
    p = phases()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # log.setup's handler, for this test only
    monkeypatch.setattr(root, "level", root.level)
    with pty() as (term, got):
        monkeypatch.setattr(sys, "stderr", term)
        log.setup("info")  # its handler writes to sys.stderr as it is at each record
        d = Display(p, term)
        d.start()
        assert sys.stderr is not term  # lines written meanwhile go through the display
        logging.getLogger("dedupd").warning("a line from the log")
        kept = sys.stderr  # (a stream handler made meanwhile would keep the stand-in)
        p.update(6_000, 2 * 1024**3)
        d.refresh()
        d.stop()
        assert sys.stderr is term
        kept.write("after the end\n")  # just the line: the display stays erased
    raw = b"".join(got).decode()
    # the display erased, the log line, the display drawn again below it
    m = re.search(r"3,000/12,000 files[^\r]*\r\x1b\[2K\x1b\[1A\x1b\[2K"
                  r"\d\d:\d\d:\d\d warning +dedupd: a line from the log\r?\n"
                  r"\x1b\[1mwalk", raw)
    assert m, repr(raw)
    assert "6,000/12,000 files  2.0 GiB/4.0 GiB" in raw[m.end():]
    # the end: the last frame erased line by line, the cursor shown again
    assert raw.endswith("\r\x1b[2K\x1b[1A\x1b[2K\x1b[?25hafter the end\r\n"), repr(raw[-80:])
    assert raw.startswith("\x1b[?25l")


def test_lines_fit_the_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    p = phases()
    p.update(note="x" * 300)
    with pty(cols=60) as (term, got):
        d = Display(p, term)
        d.start()
        d.stop()
    raw = b"".join(got).decode()
    frames = [CODES.sub("", f) for f in re.split(r"\r\n|\r", raw)]
    drawn = [f for f in frames if f.strip()]
    assert drawn and all(cell_len(f) <= 59 for f in drawn), drawn
    assert any(f.startswith("hash ") and "3,000/12,000 files" in f for f in drawn), drawn
    assert {"1", "35", "32"} <= set(SGR.findall(raw))  # bold name, done and finished bars


def test_no_colour_keeps_bold(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    with pty() as (term, got):
        d = Display(phases(), term)
        d.start()
        d.stop()
    raw = b"".join(got).decode()
    assert set(SGR.findall(raw)) == {"1", "0"}, set(SGR.findall(raw))
    assert "━" * 5 in raw


def test_a_terminal_that_goes_away_is_not_an_error(monkeypatch):
    with pty() as (term, _):
        d = Display(phases(), term)
        d.start()
    d.refresh()  # the stream is closed: nothing raised, nothing more attempted
    d.stop()
    assert d.broken


def test_dumb_terminal_gets_no_progress(monkeypatch):
    with pty() as (term, _):
        monkeypatch.setattr(sys, "stderr", term)
        monkeypatch.setenv("TERM", "xterm-256color")
        assert isinstance(open_progress(None), TerminalProgress)
        monkeypatch.setenv("TERM", "dumb")
        assert open_progress(None) is NO_PROGRESS
        assert isinstance(open_progress(True), TerminalProgress)  # --progress insists


def test_drawn_from_its_own_thread(monkeypatch):
    """Each count is drawn by the display's thread (nothing here draws), however
    late a loaded machine runs it: the test waits for each frame, not a period."""
    monkeypatch.setenv("DEDUPD_PROGRESS_DELAY", "0")

    def drawn() -> set[str]:
        raw = CODES.sub("", b"".join(got).decode(errors="replace"))
        return set(re.findall(r"walk \S+ ([0-9,]+) files", raw))

    with pty() as (term, got):
        monkeypatch.setattr(sys, "stderr", term)
        with TerminalProgress() as p:
            assert isinstance(p.display, Display)  # up at once with no delay
            p.phase("walk")
            for i in range(1, 4):
                p.update(i * 1000)
                deadline = time.monotonic() + 60
                while f"{i},000" not in drawn() and time.monotonic() < deadline:
                    threading.Event().wait(0.05)
                assert f"{i},000" in drawn(), b"".join(got)[-500:]
