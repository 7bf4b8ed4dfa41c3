"""A pool's cross-drive removal holds the duplicate's name (renamed to the hold name
its journal row reserves, checked there, then unlinked or given back). A real
unprivileged user owns the directories on the duplicate's branch that hold root's
files and swaps names at every test point of the pass: root's contents all stay
(somewhere, root's), only equal bytes share an inode, and nothing is left hidden
under a hold name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.attacker import User, reachable
from tests.integration import test_attack_session as session
from tests.integration.test_attacker import data

pytestmark = pytest.mark.integration

SWAPS = {
    # root's x.bin (the duplicate) and z.bin (other bytes) trade names, move by move
    "files": ('for m in "$1/x.bin $1/t" "$1/z.bin $1/x.bin" "$1/t $1/z.bin"; do '
              'mv $m 2>/dev/null || true; done', ("b",)),
    # the user's two directories trade places
    "dirs": ('mv "$1" "$1.t" && mv "$2" "$1" && mv "$1.t" "$2"', ("b", "c")),
}


def _digests(branches: tuple[Path, ...]) -> set[bytes]:
    return {hashlib.sha256(p.read_bytes()).digest() for b in branches
            for p in b.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("swap", list(SWAPS))
def test_pool_names_swapped_at_every_point(
        mergerfs_pool: Callable[..., Any], attacker: User, tmp_path: Path,
        swap: str) -> None:
    pool = mergerfs_pool(2)
    b0, b1 = pool.branches
    site = session.pool_site(pool, tmp_path)
    script, args = SWAPS[swap]
    k = 0
    while True:
        k += 1
        session.empty_branches(pool)
        (b0 / "a").mkdir()
        (b0 / "a" / "x.bin").write_bytes(data(1))
        u = b1 / "u"
        for d, z in (("b", 2), ("c", 3)):
            (u / d).mkdir(parents=True)
            (u / d / "x.bin").write_bytes(data(1))
            (u / d / "z.bin").write_bytes(data(z))
            attacker.owns(u / d)
        attacker.owns(u)
        reachable(u / "b")
        want = _digests(pool.branches)
        paths = tuple(str(u / a) for a in args)
        fired, seen, rep = session.pass_acting_at(
            site, tmp_path / f"db{k}", k, lambda p=paths: attacker.run(script, *p))
        if not fired:  # not attacked: both x.bin moved to b0 as links of the kept file
            kept = (b0 / "a" / "x.bin").stat().st_ino
            for d in ("b", "c"):
                assert not (u / d / "x.bin").exists(), rep.problems
                assert (b0 / "u" / d / "x.bin").stat().st_ino == kept, rep.problems
            break
        assert _digests(pool.branches) == want, (k, seen[k - 1], rep.problems)
        for b in pool.branches:
            assert not list(b.rglob(".dedupd-*")), (k, seen[k - 1], rep.problems)
        session.assert_roots_one_content_per_inode(*pool.branches)
    assert k > 10, k
