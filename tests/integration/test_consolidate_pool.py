"""The copy worker makes the run's staged files ahead (consolidate/copyloop.py POOL:
files with no name in the archive's root, which the run writes its copies into and
the worker links into their directories: the archive is one mount, as
handles.anchored never crosses one)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from dedupd.consolidate.copyloop import POOL
from dedupd.consolidate.copyworker import CopyWorker
from tests.fixtures.components import require_tools
from tests.fixtures.consolidate import archive_files, write, write_config

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_the_worker_hands_the_run_files_with_no_name(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    w = CopyWorker(os.fsencode(archive), "suffix")
    got: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < POOL and time.monotonic() < deadline:
            fd = w.fresh_file()
            if fd is None:
                time.sleep(0.01)
            else:
                got.append(fd)
        assert len(got) == POOL  # all sent at once, none more until a batch used them
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


def test_the_run_writes_into_the_worker_s_files(tmp_path: Path) -> None:
    """Seen in the system calls: the worker makes POOL files with no name as it starts;
    the run makes few or none (it takes the worker's as soon as they are there)."""
    require_tools("strace")
    src, archive = tmp_path / "src", tmp_path / "archive"
    archive.mkdir()
    for i in range(40):
        write(src / f"d{i % 4}" / f"f{i}.bin", os.urandom(1000 + i), "2019-09-09")
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db.sqlite", "s", [src], archive)
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace),
                    sys.executable, "-m", "dedupd", "consolidate", "-c", str(cfg), "s"],
                   check=True, cwd=REPO, capture_output=True, timeout=300)
    made = Counter(m.group(1) for m in re.finditer(r"^(\d+) +openat\([^\n]*O_TMPFILE[^\n]*"
                                                   r"\) = \d+$", trace.read_text(), re.M))
    run = trace.read_text().split(None, 1)[0]  # the first pid traced
    assert max(made.values()) >= POOL and made.most_common(1)[0][0] != run, made
    assert sum(made.values()) >= POOL + 1  # the probe of anon.open_in, at least
    assert len(archive_files(archive)) == 40
