"""Store.drop_orphans: inode rows no name holds any more go, in one linear pass."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, scan

N = 1500


def _tree(root: Path) -> None:
    for d in range(10):
        (root / f"d{d}").mkdir(parents=True, exist_ok=True)
    for i in range(N):
        (root / f"d{i % 10}" / f"f{i}").write_bytes(b"x" * (1 + i % 7))


def test_inodes_whose_names_moved_to_new_inodes_are_dropped_in_linear_steps(
        tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    store = Store(f"sqlite:///{tmp_path}/i.db")
    try:
        scan(store, [str(root)], ScanOptions())
        before = {k for k, in store.db.rows("SELECT ino FROM inodes")}
        # every other name now holds a new inode (a save by rename, a relink)
        # (all new inodes made before any old one is freed: no number is reused)
        moved = [root / f"d{i % 10}" / f"f{i}" for i in range(0, N, 2)]
        for p in moved:
            p.with_name(p.name + ".new").write_bytes(p.read_bytes())
        for p in moved:
            os.replace(p.with_name(p.name + ".new"), p)
        steps = [0]

        def tick() -> int:
            steps[0] += 1
            return 0

        orig = store.drop_orphans

        def counted(cur: Any) -> None:
            cur.connection.set_progress_handler(tick, 100)
            try:
                orig(cur)
            finally:
                cur.connection.set_progress_handler(None, 0)

        store.drop_orphans = counted  # type: ignore[method-assign]
        scan(store, [str(root)], ScanOptions())
        after = {k for k, in store.db.rows("SELECT ino FROM inodes")}
        live = {os.lstat(root / f"d{i % 10}" / f"f{i}").st_ino for i in range(N)}
        assert after == live
        assert len(before - after) == N // 2
        # linear in the names (~440 calls of the handler, one per 100 SQLite steps):
        # NOT IN over a row-value list scanned every name again for each orphan
        # (~56,600 calls)
        assert 0 < steps[0] < N, steps[0]
    finally:
        store.close()
