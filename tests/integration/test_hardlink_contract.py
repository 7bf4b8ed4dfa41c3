"""One contract, two linkers: the same hostile cases against hardlink and crossdrive.

`hardlink` runs on a tmpfs tree, `crossdrive` on a real mergerfs pool of two
tmpfs branches (the duplicate on the other branch). Each case must leave every
file exactly as it was and be refused with the documented reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dedupd.dedup.crossdrive import PoolPolicy, link_pool_group
from dedupd.dedup.hardlink import LinkPolicy, LinkResult, link_group
from dedupd.dedup.journal import Journal
from dedupd.index.store import Store
from dedupd.scan.scanner import DupGroup, ScanOptions, scan
from tests.fixtures.mergerfs import MergerPool
from tests.integration.linktree import blob, manifest, write

pytestmark = pytest.mark.integration


@dataclass
class Case:
    kind: str
    keep: Path  # where the kept copy goes
    dup: Path  # where the duplicate goes
    roots: tuple[Path, ...]
    store: Store
    pool: MergerPool | None = None

    def group(self, forced: bool = False) -> DupGroup:
        rep = scan(self.store, [str(r) for r in self.roots], ScanOptions())
        if not forced:
            assert len(rep.groups) == 1
            return rep.groups[0]
        size = self.keep.stat().st_size
        files = [f for g in self.store.files_of_sizes(rep.scan_id, [size]) for f in g]
        return DupGroup(size, tuple(sorted(files, key=lambda f: f.path)))

    def link(self, g: DupGroup, dry_run: bool = False) -> LinkResult:
        jr = Journal(self.store)
        try:
            if self.pool is None:
                pol = LinkPolicy("v", tuple(os.fsencode(r) for r in self.roots))
                return link_group(jr, g, pol, dry_run)
            pp = PoolPolicy("p", os.fsencode(self.pool.root),
                            tuple(os.fsencode(b) for b in self.pool.branches))
            return link_pool_group(jr, g, pp, dry_run)
        finally:
            jr.close()

    def state(self) -> list[dict[str, tuple[str, int, int]]]:
        return [manifest(r) for r in self.roots]


@pytest.fixture(params=["hardlink", "crossdrive"])
def case(request: pytest.FixtureRequest, tmpfs: Callable[..., Path],
         mergerfs_pool: Callable[..., MergerPool], tmp_path: Path) -> Iterator[Case]:
    store = Store(f"sqlite:///{tmp_path}/index.db")
    if request.param == "hardlink":
        root = tmpfs() / "vol"
        c = Case("hardlink", root / "a/k.bin", root / "b/d.bin", (root,), store)
    else:
        pool = mergerfs_pool(2)
        b0, b1 = pool.branches
        c = Case("crossdrive", b0 / "a/k.bin", b1 / "b/d.bin", pool.branches, store, pool)
    yield c
    store.close()


def test_contract_links_equal_files(case: Case) -> None:
    write(case.keep, blob(1, 70_000))
    write(case.dup, blob(1, 70_000))
    g = case.group()
    before = case.state()
    assert case.link(g, dry_run=True).actions and case.state() == before
    res = case.link(g)
    assert res.linked == 1 and res.bytes_reclaimed == 70_000
    kept = case.keep.stat().st_ino
    if case.kind == "hardlink":
        assert case.dup.stat().st_ino == kept
    else:
        assert not case.dup.exists()
        assert (case.keep.parent.parent / "b/d.bin").stat().st_ino == kept
    again = case.link(case.group(forced=True))
    assert again.linked == 0 and again.actions == ()


def test_contract_forced_collision_refused(case: Case) -> None:
    write(case.keep, blob(1, 70_000))
    write(case.dup, blob(2, 70_000))
    before = case.state()
    res = case.link(case.group(forced=True))
    assert res.linked == 0 and dict(res.counts) == {"content_differs": 1}
    assert case.state() == before


def test_contract_writer_after_hashing_refused(case: Case) -> None:
    write(case.keep, blob(1, 70_000))
    write(case.dup, blob(1, 70_000))
    g = case.group()
    with open(case.dup, "r+b") as f:
        f.write(b"new")
    before = case.state()
    res = case.link(g)
    assert res.linked == 0 and dict(res.counts) == {"changed": 1}
    assert case.state() == before


def test_contract_mode_difference_refused(case: Case) -> None:
    write(case.keep, blob(1, 70_000))
    write(case.dup, blob(1, 70_000), mode=0o600)
    before = case.state()
    res = case.link(case.group())
    assert res.linked == 0 and dict(res.counts) == {"mode_differs": 1}
    assert case.state() == before


def test_contract_open_for_write_refused(case: Case) -> None:
    write(case.keep, blob(1, 70_000))
    write(case.dup, blob(1, 70_000))
    g = case.group()
    before = case.state()
    with open(case.dup, "ab"):
        res = case.link(g)
    assert res.linked == 0 and dict(res.counts) == {"open_for_write": 1}
    assert case.state() == before
