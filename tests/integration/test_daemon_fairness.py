"""Round-robin: a huge volume cannot starve a small one."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def make_many(root: Path, n: int) -> None:
    """n small files of ~1000 different sizes (so hashing has many small groups)."""
    root.mkdir()
    for d in range(0, n, 1000):
        sub = root / f"d{d // 1000:03d}"
        sub.mkdir()
        for i in range(d, min(d + 1000, n)):
            fd = os.open(sub / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, (f"{i:08d}" * 130)[: 1 + i % 1000].encode())
            os.close(fd)


def make_small(root: Path) -> None:
    """100 files: 4 sizes x 2 contents, so 8 duplicate groups."""
    root.mkdir()
    for i in range(100):
        size, variant = 100 * (1 + i % 4), (i // 4) % 2
        (root / f"s{i:03d}").write_bytes(bytes([65 + variant]) * size)


def test_small_volume_done_before_big_scan_finishes(dedupd_daemon, daemon_base, fast_dir):
    make_many(fast_dir / "big", 50_000)
    make_small(daemon_base / "small")
    # big first in the config: without round-robin it would be served to the end first
    dp = dedupd_daemon({"big": {"path": str(fast_dir / "big")},
                        "small": {"path": str(daemon_base / "small")}})
    doc = dp.wait_until(lambda d: d["volumes"]["small"]["passes"]["completed"] == 1,
                        timeout=120, every=0.02)
    small = doc["volumes"]["small"]["counters"]
    assert small["files_seen"] == 100 and small["groups"] == 8
    big = doc["volumes"]["big"]
    assert big["passes"]["completed"] == 0
    assert 0 < big["counters"]["files_seen"] <= 50_000  # live progress of the scan
    dp.wait_until(lambda d: d["volumes"]["big"]["state"] != "scanning", timeout=180)
    log = dp.log_text()
    small_done = log.index("volume small: pass 1 finished")
    big_scanned = re.search(r"volume big: scan finished: (\d+) new", log)
    assert big_scanned is not None, log
    assert int(big_scanned.group(1)) == 50_000
    assert small_done < big_scanned.start(), log
    assert dp.stop() == 0, dp.log_text()
