"""The copy phase's index writer process: order, failures, and a parent killed -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dedupd.consolidate.writer import IndexWriter, WriteFailed
from dedupd.files.events import FileEvent
from dedupd.index import provenance as prov
from dedupd.index.provenance import Provenance
from dedupd.index.store import HashUpdate, Store

ROOT = Path(__file__).resolve().parents[2]


def _row(src: bytes, content: bytes, when: float = 1.0) -> Provenance:
    return Provenance("c", src, b"/a/" + os.path.basename(src), content, 3, 1, 2, 3, 4,
                      when, when)


def test_writes_every_flush_in_order_and_counts_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    try:
        scan = store.begin_scan([b"/a"])
        ev = FileEvent(b"/a/x", 1, 77, 3, 5, 6, 0o100644, 0, 0, 1)
        w = IndexWriter(url)
        w.write(scan, [ev], [HashUpdate(1, 77, 11, b"h" * 16)], [_row(b"/s/x", b"h" * 16)],
                "c", [], 1.0)
        # a later flush replaces the row: applied after the first, never before
        w.write(scan, [], [], [_row(b"/s/x", b"k" * 16, 2.0), _row(b"/s/y", b"k" * 16)],
                "c", [], 2.0)
        w.write(scan, [], [], [], "c", [b"/s/y"], 9.0)
        assert w.close() == 3
        rows = prov.load(store, "c")
        assert rows[b"/s/x"].content == b"k" * 16 and rows[b"/s/x"].first_seen == 1.0
        assert rows[b"/s/y"].last_seen == 9.0
        [f] = [f for g in prov.files_by_size(store, scan) for f in g]
        assert (f.ino, f.head, f.full) == (77, 11, b"h" * 16)
    finally:
        store.close()


def test_a_failed_write_is_an_error_not_a_partial_success(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    Store(url).close()
    w = IndexWriter(url)
    bad = Provenance(None, b"/s/x", b"/a/x", b"h", 1, 1, 2, 3, 4, 1.0, 1.0)  # type: ignore[arg-type]
    w.write(1, [], [], [bad], "c", [], 1.0)
    with pytest.raises(WriteFailed, match="writing the index failed"):
        w.close()


def test_the_writer_ends_with_its_parent_killed(tmp_path: Path) -> None:
    """A kill -9 of the copying process leaves no writer behind: it sees EOF and exits."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    code = ("import os, signal, sys\n"
            "from dedupd.consolidate.writer import IndexWriter\n"
            f"w = IndexWriter({url!r})\n"
            "print(w.pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    pid = int(r.stdout)
    deadline = time.monotonic() + 20
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the index writer outlived its parent"


def _alive(pid: int) -> bool:
    """Running (an exited child of init waiting to be reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b") ", 1)[-1][:1] != b"Z"
    except FileNotFoundError:
        return False
