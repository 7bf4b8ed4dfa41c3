"""Consolidation's prune removes a source name through a hold (fsops.unlink_if_inode:
the name renamed to a hold name, the file there checked, unlinked, or given its name
back). An editor saves over the source name right after the check, so the hold takes
the save; the run is killed before the save gets its name back. The next run's
recovery must give it back: a hold name no journal row names is never found again
(the save hidden under .dedupd-hold-<random>, its name missing; the next import
then takes it for a source file of that name).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from dedupd import testpoints
from dedupd.config import ConsolidateConfig
from dedupd.consolidate.archive_ops import journal_volume
from dedupd.consolidate.run import Options, consolidate
from dedupd.dedup import journal as J
from dedupd.dedup.recovery import recover_all
from dedupd.fsops import link as fs
from dedupd.index.store import Store

pytestmark = pytest.mark.integration

SAVED = b"the editor's save\n" * 100


def _import(cfg: ConsolidateConfig, db: Path) -> dict[str, Any]:
    store = Store(f"sqlite:///{db}")
    try:
        return consolidate(store, cfg, Options()).as_json()
    finally:
        store.close()


def _killed_after_hold(cfg: ConsolidateConfig, db: Path, src: Path) -> None:
    """In a child: the import, an editor's save over src right after the prune's
    check (the second mutate point on src: unlink_if_inode's, then _remove_in's), and
    SIGKILL right after the hold, before any give-back."""
    pid = os.fork()
    if pid == 0:
        try:
            seen = [0]

            def act(_point: str, path: bytes) -> None:
                if path == bytes(src):
                    seen[0] += 1
                    if seen[0] == 2:
                        new = src.with_name(".save.tmp")
                        new.write_bytes(SAVED)
                        os.rename(new, src)

            def die(*_a: object) -> bool:
                os.kill(os.getpid(), signal.SIGKILL)
                return False

            fs.put_back = die  # type: ignore[assignment]  # the kill, after the hold
            with testpoints.acting(("mutate",), act):
                _import(cfg, db)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_killed_while_a_save_is_held_by_prune(tmp_path: Path) -> None:
    share, archive = tmp_path / "share", tmp_path / "archive"
    share.mkdir()
    archive.mkdir()
    src = share / "photo.bin"
    src.write_bytes(os.urandom(50_000))
    cfg = ConsolidateConfig("c", (share,), archive, layout="{name}", prune_sources=True)
    _killed_after_hold(cfg, tmp_path / "db", src)
    assert not src.exists() and len(list(share.glob(".dedupd-hold-*"))) == 1
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    jr = J.Journal(store)
    try:  # what the next run does first
        done = recover_all(jr, journal_volume("c"))
    finally:
        jr.close()
        store.close()
    assert src.exists() and src.read_bytes() == SAVED, (done, list(share.iterdir()))
    assert not list(share.glob(".dedupd-hold-*")), done
