"""A race a concurrent writer wins today (kept off main: this test fails; see the
h-attack report). The hardlink pass's rename fallback (filesystems without
RENAME_EXCHANGE: zfs-fuse, NFS, SMB; forced here by DEDUPD_TEST_NO_EXCHANGE)
renames the temp link over whatever the duplicate's name holds after the last
re-stat: an editor's atomic save (a new file renamed over the name) in that instant
is replaced by the link, and its bytes have no name left (a quarantine keeps the
old duplicate, not the save). With RENAME_EXCHANGE the old name's inode is checked
after the swap and swapped back: the same test passes
(test_attack_session.py::test_atomic_save_at_every_point_is_kept[exchange]).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.attacker import User
from tests.integration import test_attack_session as session

pytestmark = pytest.mark.integration


def test_atomic_save_at_every_point_with_the_rename_fallback(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    session.test_atomic_save_at_every_point_is_kept(loopfs, attacker, tmp_path,
                                                    monkeypatch, "rename")
