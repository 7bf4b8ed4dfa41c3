"""XFS with reflink=1: the same extent dedupe, with a full walk per pass (no generations)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd.index.store import Store
from tests.fixtures.components import require_tools
from tests.integration.extent_helpers import (
    BLOCK,
    digests,
    make_groups,
    run_pass,
    used_bytes,
    write_random,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("backend", ["ioctl", "duperemove"])
def test_xfs_reclaims_duplicates(loopfs: Callable[[str, str], Path], store: Store,
                                 backend: str) -> None:
    require_tools("mkfs.xfs", "duperemove")
    vol = loopfs("xfs", "1G")
    dup = make_groups(vol / "photos", groups=10, copies=3, size_blocks=128)
    write_random(vol / "photos" / "unique.jpg", 100 * BLOCK, 5)
    before = digests(vol)
    used0 = used_bytes(vol)
    r = run_pass(store, vol, dedup_backend=backend)
    assert r.kind == "xfs" and r.counters["hits"] == 20, (r.counters, r.problems)
    reclaimed = used0 - used_bytes(vol)
    assert abs(reclaimed - dup) <= dup * 0.01, (reclaimed, dup)
    assert abs(r.bytes_reclaimed - dup) <= dup * 0.01
    assert digests(vol) == before
    again = run_pass(store, vol)
    assert again.actions == () and again.counters.get("bytes_read", 0) == 0
    assert again.counters["skips_done"] == 20
