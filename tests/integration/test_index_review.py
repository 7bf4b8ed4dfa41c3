"""Attacks on the per-directory skip of `dedupd scan` (issue #13): whatever the
index learnt in between, a scan that skips unchanged directories reports what a
fresh scan of the same tree reports."""

from __future__ import annotations

from pathlib import Path

from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan
from tests.integration.extent_helpers import run_pass


def _shape(rep: ScanReport) -> list[list[bytes]]:
    return sorted(sorted(f.path for f in g.files) for g in rep.groups)


def _fresh(root: Path, db: Path) -> ScanReport:
    store = Store(f"sqlite:///{db}")
    try:
        return scan(store, [root], ScanOptions())
    finally:
        store.close()


def test_a_volume_pass_with_another_min_size_between_two_scans(tmp_path: Path) -> None:
    # d holds only small files and a subdirectory with a big one: a pass with a
    # bigger min_size forgets d's small files without writing into d
    root = tmp_path / "t"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "s1.bin").write_bytes(b"s" * 300)
    (root / "d" / "s2.bin").write_bytes(b"s" * 300)
    (root / "d" / "sub" / "big.bin").write_bytes(b"b" * 20000)
    (root / "d" / "sub" / "big2.bin").write_bytes(b"b" * 20000)
    store = Store(f"sqlite:///{tmp_path}/i.db")
    first = scan(store, [root], ScanOptions())
    assert len(first.groups) == 2
    run_pass(store, root, min_size=8192, dry_run=True, kind="plain")
    again = scan(store, [root], ScanOptions())
    assert _shape(again) == _shape(_fresh(root, tmp_path / "fresh.db")) == _shape(first)
    store.close()
