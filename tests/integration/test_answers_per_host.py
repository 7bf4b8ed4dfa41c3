"""Two hosts sharing one PostgreSQL inventory count their hash epochs apart
(meta hash_epoch per host, answers.py): one host's deleted hashed row or moved hash
voided every kept answer of every host (a pass over the index at the other host's
next unchanged rescan). An inventory whose kept answers predate the per-host
counters keeps them: each host's counter starts at the shared one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.files.fsid import HostIdentity
from dedupd.index import answers
from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, ScanReport, scan

pytestmark = pytest.mark.integration
SIZE = 9000


def _tree(root: Path) -> None:
    for d in ("a", "b"):
        (root / d).mkdir(parents=True)
        (root / d / "x").write_bytes(b"x" * SIZE)
    (root / "b" / "y").write_bytes(os.urandom(SIZE))


def _scan(url: str, host: str, root: Path, passes: list[str]) -> ScanReport:
    store = Store(url, HostIdentity(host, f"m-{host}"))
    real = store.groups_under

    def counted(roots: object, min_size: int) -> object:
        passes.append(host)
        return real(roots, min_size)  # type: ignore[arg-type]

    store.groups_under = counted  # type: ignore[method-assign]
    try:
        return scan(store, [str(root)], ScanOptions())
    finally:
        store.close()


def _epoch(url: str, host: str) -> int | None:
    store = Store(url, HostIdentity(host, f"m-{host}"))
    try:
        return answers.epoch(store)
    finally:
        store.close()


def _count(rep: ScanReport) -> list[int]:
    return sorted(len(g.files) for g in rep.groups)


def test_one_hosts_deletion_leaves_the_others_answer(pg_url: str, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _tree(one)
    _tree(two)
    passes: list[str] = []
    for host, root in (("one", one), ("two", two)):
        assert _count(_scan(pg_url, host, root, passes)) == [2]
        assert _count(_scan(pg_url, host, root, passes)) == [2]  # kept now
    assert _count(_scan(pg_url, "two", two, passes)) == [2]
    before = list(passes)
    (one / "b" / "y").unlink()  # a hashed row of host one's goes: its epoch moves
    (one / "a" / "x").unlink()
    assert _count(_scan(pg_url, "one", one, passes)) == []
    assert _epoch(pg_url, "one") == 2 and _epoch(pg_url, "two") == 0
    rep = _scan(pg_url, "two", two, passes)
    assert _count(rep) == [2] and rep.stats["bytes_read"] == 0
    assert passes[len(before):] == ["one"], passes  # two's answer still held


def test_answers_kept_before_the_per_host_epochs_hold(pg_url: str, tmp_path: Path) -> None:
    """An inventory of the dedupd before: only host 0's counter (here at 5), an
    answer kept at it; its host's first scan now reports it without a pass."""
    root = tmp_path / "r"
    _tree(root)
    passes: list[str] = []
    _scan(pg_url, "one", root, passes)
    store = Store(pg_url, HostIdentity("one", "m-one"))
    try:
        with store.db.tx() as cur:  # as the previous dedupd left it
            cur.execute("DELETE FROM meta WHERE host <> 0 AND \"key\" = 'hash_epoch'")
            cur.execute("UPDATE meta SET value = '5' WHERE \"key\" = 'hash_epoch'")
            cur.execute("UPDATE answers SET epoch = 5")
            for t in ("inodes_hash_moved_host", "inodes_gone_host"):
                cur.execute(f"DROP TRIGGER {t} ON inodes")
    finally:
        store.close()
    rep = _scan(pg_url, "one", root, passes)
    assert _count(rep) == [2] and passes == [], passes  # the kept answer, no pass
    assert _epoch(pg_url, "one") == 5
    (root / "b" / "y").unlink()  # counted by the triggers made again
    _scan(pg_url, "one", root, passes)
    assert _epoch(pg_url, "one") == 6
