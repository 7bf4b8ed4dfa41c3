"""The copy phase's index writer process: order, failures, and a parent killed -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import astuple
from pathlib import Path

import pytest

from dedupd.consolidate import writer
from dedupd.consolidate.copyworker import stat_wire
from dedupd.consolidate.writer import IndexWriter, WriteFailed
from dedupd.files.events import FileEvent
from dedupd.forkpipe import Wire
from dedupd.index import provenance as prov
from dedupd.index.provenance import Provenance
from dedupd.index.store import HashUpdate, Store
from tests.fixtures.procs import gone_within

ROOT = Path(__file__).resolve().parents[2]


def _row(src: Path, archive: Path, content: bytes, when: float = 1.0) -> Wire:
    """A provenance row in the writer's wire form (Provenance's fields, consolidate/rows.py)."""
    st = os.stat(src)
    return astuple(Provenance("c", bytes(src), bytes(archive), content, st.st_size,
                              st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, when,
                              when))


def test_writes_every_flush_in_order_and_counts_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    src, arch = tmp_path / "s", tmp_path / "a"
    for d in (src, arch):
        d.mkdir()
    for n in ("x", "y"):
        (src / n).write_bytes(b"abc")
    (arch / "x").write_bytes(b"abc")
    store = Store(url)
    try:
        scan = store.begin_scan([bytes(arch)])
        ast, sst = os.stat(arch / "x"), os.stat(src / "x")
        w = IndexWriter(url)
        # a copy record (rows.Rows.copied): archive file, both hashes and src/x's row
        w.write(scan, [(bytes(arch / "x"), stat_wire(ast), 11, b"h" * 16, bytes(src / "x"),
                        sst.st_dev, sst.st_ino, sst.st_size, sst.st_mtime_ns,
                        sst.st_ctime_ns)], [], [], "c", [], 1.0)
        # a later flush replaces the row: applied after the first, never before
        w.write(scan, [], [], [_row(src / "x", arch / "x", b"k" * 16, 2.0),
                               _row(src / "y", arch / "x", b"k" * 16)], "c", [], 2.0)
        w.write(scan, [], [], [], "c", [bytes(src / "y")], 9.0)
        assert w.close() == 3
        rows = prov.load(store, "c")
        x, y = rows[bytes(src / "x")], rows[bytes(src / "y")]
        assert x.content == b"k" * 16 and x.first_seen == 1.0 and y.last_seen == 9.0
        [f] = [f for g in prov.files_by_size(store, scan) for f in g]
        # a 3-byte file: its full hash is all the index keeps (schema 4: no head)
        assert (f.ino, f.head, f.full) == (ast.st_ino, None, b"h" * 16)
    finally:
        store.close()


def test_a_failed_write_is_an_error_not_a_partial_success(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    Store(url).close()
    w = IndexWriter(url)
    bad = (None, b"/s/x", b"/a/x", b"h", 1, 1, 2, 3, 4, 1.0, 1.0)  # no consolidation
    w.write(1, [], [], [bad], "c", [], 1.0)
    with pytest.raises(WriteFailed, match="writing the index failed"):
        w.close()


def test_the_writer_ends_with_its_parent_killed(tmp_path: Path) -> None:
    """A kill -9 of the copying process leaves no writer behind: it sees EOF and exits."""
    _writer_of_a_killed_parent(f"sqlite:///{tmp_path / 'db.sqlite'}", "")


def _writer_of_a_killed_parent(url: str, writes: str) -> None:
    """A process starts an IndexWriter, runs `writes` (code using w), then kills
    itself -9: its writer must exit within 20 s (it sees EOF)."""
    code = ("import os, signal, sys\n"
            "from dedupd.consolidate.writer import IndexWriter\n"
            f"w = IndexWriter({url!r})\n"
            f"{writes}"
            "print(w.pid, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       timeout=60, check=False)
    assert r.returncode == -signal.SIGKILL, r.stderr
    pid = int(r.stdout)
    assert gone_within(pid, 20), "the index writer outlived its parent"

def test_rows_sent_are_committed_while_no_more_come(tmp_path: Path) -> None:
    """Flushes share a transaction only while they follow each other: one left alone
    is committed within about COMMIT_EVERY, and the index's write lock is free again
    (another writer, the parent here, is not kept waiting until close())."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    src, arch = tmp_path / "s", tmp_path / "a"
    for d in (src, arch):
        d.mkdir()
    (src / "x").write_bytes(b"abc")
    store = Store(url)
    w = IndexWriter(url)
    try:
        w.write(1, [], [], [_row(src / "x", arch / "x", b"h" * 16)], "c", [], 1.0)
        deadline = time.monotonic() + 20
        while not prov.load(store, "c") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bytes(src / "x") in prov.load(store, "c")
        t = time.monotonic()
        store.set_meta("parent", "wrote")  # takes the write lock
        assert time.monotonic() - t < 5
        assert w.close() == 1
    finally:
        w.abandon()
        store.close()


def test_flushes_received_before_the_parent_died_are_all_written(tmp_path: Path) -> None:
    """The parent killed -9 right after its flushes: the child, maybe inside a
    transaction of several, sees EOF and commits every row it received."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    src = tmp_path / "s"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(b"abc")
    Store(url).close()
    rows = [[_row(src / f"f{i}", tmp_path / "a" / f"f{i}", b"h" * 16)] for i in range(3)]
    _writer_of_a_killed_parent(url, f"for r in {rows!r}:\n"
                                    "    w.write(1, [], [], r, 'c', [], 1.0)\n")
    store = Store(url)
    try:
        assert sorted(prov.load(store, "c")) == [bytes(src / f"f{i}") for i in range(3)]
    finally:
        store.close()


def test_hashes_of_new_archive_files_go_in_with_their_rows_as_save_hashes_wrote_them(
        tmp_path: Path) -> None:
    """apply() writes the hashes of a flush's new inodes in their rows (Store.record's
    hashes): the index must end as record then save_hashes left it -- a small file
    without its head, a large one with it, the last of two updates, one at another
    stat skipped, a known inode's hashes updated. The new inodes come as copy records
    (rows.Rows.copied), whose own hashes go before the flush's."""
    src, arch = tmp_path / "s", tmp_path / "a"
    for d in (src, arch):
        d.mkdir()
    (src / "known").write_bytes(b"k")
    (arch / "small").write_bytes(b"abc")
    (arch / "big").write_bytes(b"b" * (200 * 1024))
    (arch / "twice").write_bytes(b"t")
    (arch / "stale").write_bytes(b"s")
    evs = [FileEvent.from_stat(bytes(arch / n), os.stat(arch / n))
           for n in ("small", "big", "twice", "stale")]
    known = os.stat(src / "known")
    small, big, twice, stale = evs
    hashes = [(small.dev, small.ino, 1, b"1" * 16, None),
              (big.dev, big.ino, 2, b"2" * 16, (big.size, big.mtime_ns, big.ctime_ns)),
              (twice.dev, twice.ino, 3, b"3" * 16, None),
              (known.st_dev, known.st_ino, 4, b"4" * 16, None),
              (twice.dev, twice.ino, 5, b"5" * 16, None),
              (stale.dev, stale.ino, 6, b"6" * 16, (stale.size + 1, stale.mtime_ns,
                                                    stale.ctime_ns))]
    rows = []
    for way in ("apply", "record then save_hashes"):
        url = f"sqlite:///{tmp_path / way}.sqlite"
        store = Store(url)
        try:
            scan = store.begin_scan([bytes(src), bytes(arch)])
            store.record(scan, [FileEvent.from_stat(bytes(src / "known"), known)])
            # each archive file copied from src/known, with hashes the flush's replace
            copies = [(e.path, stat_wire(os.stat(e.path)), 7, b"7" * 16, bytes(src / "known"),
                       known.st_dev, known.st_ino, known.st_size, known.st_mtime_ns,
                       known.st_ctime_ns) for e in evs]
            if way == "apply":
                writer.apply(store, (scan, copies, hashes, [], "c", [], 1.0))
            else:
                store.record(scan, evs)
                own = [h for e in evs for h in ((e.dev, e.ino, 7, b"7" * 16, None),
                                                 (known.st_dev, known.st_ino, 7, b"7" * 16,
                                                  None))]
                store.save_hashes([HashUpdate(*h) for h in own + hashes])
            rows.append(store.db.rows('SELECT ino, size, head, "full", unstable FROM inodes '
                                      "ORDER BY ino"))
        finally:
            store.close()
    assert rows[0] == rows[1]
    got = {r[0]: (r[2], r[3]) for r in rows[0]}
    assert got[small.ino] == (None, b"1" * 16) and got[big.ino] == (2, b"2" * 16)
    assert got[twice.ino] == (None, b"5" * 16) and got[stale.ino] == (None, None)
    assert got[known.st_ino] == (None, b"4" * 16)


def test_after_its_answer_the_writer_checkpoints_then_is_reaped(tmp_path: Path) -> None:
    """close() returns at the writer's answer; the child then copies its WAL into the
    database file (the run's close of the index did that after everything else) and
    wait() reaps it."""
    db = tmp_path / "db.sqlite"
    url = f"sqlite:///{db}"
    src = tmp_path / "s"
    src.mkdir()
    for i in range(300):
        (src / f"f{i}").write_bytes(b"abc")
    Store(url).close()  # the schema, checkpointed by the last close
    before = db.stat().st_size
    w = IndexWriter(url)
    pid = w.pid
    w.write(1, [], [], [_row(src / f"f{i}", tmp_path / "a" / f"f{i}", b"h" * 16)
                        for i in range(300)], "c", [], 1.0)
    assert w.close(reap=False) == 300
    w.wait()
    with pytest.raises(ChildProcessError):  # reaped
        os.waitpid(pid, os.WNOHANG)
    assert db.stat().st_size > before  # the rows are in the database file itself
    store = Store(url)
    try:
        assert len(prov.load(store, "c")) == 300
    finally:
        store.close()
