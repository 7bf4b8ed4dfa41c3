"""Pure parts of the BTRFS/XFS pass: full-scan policy, FIEMAP run merging, dedupe worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dedupd.config import VolumeConfig
from dedupd.fiemap import EXTENT_DELALLOC, EXTENT_SHARED, Extent, layout, same_extents
from dedupd.volumes.btrfs import full_scan_reason

VOL = VolumeConfig(name="v", kind="btrfs", path=Path("/v"), max_generation_gap=1000,
                   min_hours_between_full_scans=24.0)


def test_full_scan_policy() -> None:
    now = time.time()
    assert full_scan_reason(VOL, None, 10, None, now, False) == "first run"
    assert full_scan_reason(VOL, 5, 10, now - 60, now, True) == "forced"
    assert full_scan_reason(VOL, 5, 10, now - 60, now, False) is None
    # a large gap forces a full scan, but at most once per min_hours_between_full_scans
    assert full_scan_reason(VOL, 5, 5000, now - 3600, now, False) is None
    assert full_scan_reason(VOL, 5, 5000, now - 25 * 3600, now, False) == "generation gap"
    hour = time.localtime(now).tm_hour
    sched = VolumeConfig(name="v", kind="btrfs", path=Path("/v"), full_scan_hour=hour)
    assert full_scan_reason(sched, 5, 6, now - 2 * 3600, now, False) == "scheduled"
    assert full_scan_reason(sched, 5, 6, now - 600, now, False) is None


def test_layout_merges_contiguous_pieces() -> None:
    one = [Extent(0, 4096, 3 * 4096, EXTENT_SHARED)]
    pieces = [Extent(0, 4096, 4096, 0), Extent(4096, 8192, 8192, EXTENT_SHARED)]
    assert layout(one) == layout(pieces) == [(0, 4096, 3 * 4096)]
    assert same_extents(one, pieces)
    assert not same_extents(one, [Extent(0, 4096 * 9, 3 * 4096, 0)])
    # delayed allocations have no address yet: never "the same"
    assert not same_extents([Extent(0, 0, 4096, EXTENT_DELALLOC)],
                            [Extent(0, 0, 4096, EXTENT_DELALLOC)])


def test_dedupe_worker_hands_a_failure_back() -> None:
    from dedupd.dedup.worker import DedupeWorker
    from dedupd.hashing import Group

    class Boom:
        calls = 0

        def dedupe_group(self, *a: object) -> None:
            Boom.calls += 1
            raise RuntimeError("kaput")

    w = DedupeWorker(Boom())  # type: ignore[arg-type]
    g = Group(1, (), b"x" * 16)
    w.submit(g)
    with pytest.raises(RuntimeError, match="kaput"):
        for _ in range(50):  # the failure surfaces at a later submit or at close
            time.sleep(0.01)
            w.submit(g)
        w.close()
    w.close()
    assert Boom.calls == 1


def test_an_extent_pass_loads_no_other_kind() -> None:
    """run --once on btrfs/xfs imports neither the hardlink kinds nor SQLAlchemy."""
    import subprocess
    import sys

    code = ("import sys; from dedupd.volumes.pipeline import KIND_TABLE, _load; "
            "assert KIND_TABLE['xfs'] == KIND_TABLE['btrfs']; "
            "[_load(r) for r in (KIND_TABLE['btrfs'].source, KIND_TABLE['btrfs'].engine)]; "
            "print(sorted(m for m in ('sqlalchemy', 'dedupd.dedup.hardlink', "
            "'dedupd.volumes.link_engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
