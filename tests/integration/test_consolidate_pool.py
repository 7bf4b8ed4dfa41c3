"""The copy worker makes the run's staged files ahead (consolidate/copyloop.py POOL:
files with no name in the archive's root, which the run writes its copies into and
the worker links into their directories: the archive is one mount, as
handles.anchored never crosses one)."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dedupd.consolidate.copyloop import POOL_FIRST, pool_size
from dedupd.consolidate.copyworker import CopyWorker, WorkerFailed
from tests.fixtures.components import require_tools
from tests.fixtures.consolidate import archive_files, write, write_config
from tests.fixtures.procs import gone_within

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_the_worker_hands_the_run_files_with_no_name(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    w = CopyWorker(os.fsencode(archive), "suffix")
    pool = pool_size(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    assert pool > 0
    got: list[int] = []
    try:
        time.sleep(0.5)
        assert w.fresh_file() is None  # none made before a round says how many
        w.expect(10 * pool)
        deadline = time.monotonic() + 30
        while len(got) < pool and time.monotonic() < deadline:
            fd = w.fresh_file()
            if fd is None:
                time.sleep(0.01)
            else:
                got.append(fd)
        assert len(got) == pool  # all sent at once, none more until a batch used them
        assert w.fresh_file() is None
        for fd in got:
            st = os.fstat(fd)
            assert stat.S_ISREG(st.st_mode) and st.st_nlink == 0 and st.st_size == 0
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_dev == os.stat(archive).st_dev
    finally:
        for fd in got:
            os.close(fd)
        w.close()
    assert os.listdir(archive) == []  # nothing with a name, nothing left


def test_a_worker_that_makes_none_says_so(tmp_path: Path) -> None:
    """Under an open-file limit too low for the pool the worker makes no file ahead
    and says so: the run stops asking (no system call per copy)."""
    archive = tmp_path / "archive"
    archive.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        w = CopyWorker(os.fsencode(archive), "suffix")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        deadline = time.monotonic() + 30
        while not w._none_coming and time.monotonic() < deadline:
            assert w.fresh_file() is None
            time.sleep(0.01)
        assert w._none_coming and w.fresh_file() is None
    finally:
        w.close()


def test_the_run_writes_into_the_worker_s_files(tmp_path: Path) -> None:
    """Seen in the system calls, process by process: the worker makes files with no
    name as the copies begin, as many as the run may use and no more, and more as
    batches use them; the run makes fewer than its copies (it takes the worker's once
    they are there: under strace, the worker's first come after the run's first
    copies of a small import)."""
    require_tools("strace")
    src, archive = tmp_path / "src", tmp_path / "archive"
    archive.mkdir()
    n = 600
    for i in range(n):
        write(src / f"d{i % 4}" / f"f{i}.bin", os.urandom(100 + i), "2019-09-09")
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "s", [src], archive)
    trace = tmp_path / "t"
    r = subprocess.run(["strace", "-ff", "-qq", "-e", "trace=execve,openat", "-o", str(trace),
                        sys.executable, "-m", "dedupd", "consolidate", "-c", str(cfg), "s"],
                       cwd=REPO, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    made, run = {}, ""
    for f in tmp_path.glob("t.*"):
        text = f.read_text()
        made[f.name] = len(re.findall(r"openat\([^\n]*O_TMPFILE[^\n]*\) = \d+$", text, re.M))
        if text.startswith("execve("):  # the run: the process strace started
            run = f.name
    worker = max((k for k in made if k != run), key=lambda k: made[k])
    # never more than the run may use (one more: the worker's probe of O_TMPFILE): a file
    # left unused is freed at the end, which slows ext4's next creates (copyloop.POOL)
    assert POOL_FIRST <= made[worker] <= n + 1, made
    assert made[run] < n, made
    assert len(archive_files(archive)) == n


def test_a_worker_killed_with_handles_unread_is_a_dead_worker(tmp_path: Path) -> None:
    """Killed with handles of the run still in its socket, the worker resets it: the
    run's next look for files made ahead finds none (not ECONNRESET, a traceback in
    the kill-at-every-step test once), and its next batch fails as a dead worker."""
    archive = tmp_path / "archive"
    archive.mkdir()
    w = CopyWorker(os.fsencode(archive), "suffix")
    fd = os.open(archive, os.O_RDONLY)
    try:
        socket.send_fds(w._fds, [b"f"], [fd])  # the worker reads them only with a batch
        os.kill(w.pid, signal.SIGKILL)
        assert gone_within(w.pid, 20)  # a zombie of ours: dead, not yet reaped
        assert w.fresh_file() is None
        assert w.fresh_file() is None  # no more asking
        with pytest.raises(WorkerFailed, match="the copy worker died"):
            w.send_batch([], [fd], 0)
    finally:
        os.close(fd)
        w.abandon()
