"""An unprivileged user against the held swap (no RENAME_EXCHANGE: zfs-fuse, NFS,
SMB; forced here by DEDUPD_TEST_NO_EXCHANGE) in a shared directory with the sticky
bit (mode 1777, as /tmp or a group share): there a user may create a name that does
not exist, but may not rename or remove another user's file. The held swap leaves
the duplicate's name missing for a few system calls; a user who creates the name
in that instant must not end up owning another user's path (the held duplicate,
its bytes equal to the kept file's, was then removed as if the owner had saved).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable
from tests.integration import test_attack_session as session
from tests.integration.test_attacker import data

pytestmark = pytest.mark.integration

# Create the name only if it does not exist (O_EXCL): all a sticky directory allows.
TAKE = '( set -C; echo mine > "$1/b" ) 2>/dev/null || true'


def root_files_in_sticky_dir(vol: Path) -> Path:
    """vol/share (root's, 1777) with root's equal files a and b."""
    for child in vol.iterdir():
        session.shutil.rmtree(child) if child.is_dir() else child.unlink()
    share = vol / "share"
    share.mkdir()
    share.chmod(0o1777)
    (share / "a").write_bytes(data(1))
    (share / "b").write_bytes(data(1))
    reachable(share)
    return share


@pytest.mark.parametrize("fallback", ["1", "noreplace"])
def test_user_never_takes_a_name_in_a_sticky_dir(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, fallback: str) -> None:
    """At the k-th test point of the pass, for every k, the user tries to create
    share/b: afterwards share/b is root's file with root's bytes (linked or not),
    and nothing of ours is left."""
    monkeypatch.setenv("DEDUPD_TEST_NO_EXCHANGE", fallback)
    site, vol = session.plain_site(loopfs, tmp_path)
    k = 0
    while True:
        k += 1
        share = root_files_in_sticky_dir(vol)
        fired, seen, rep = session.pass_acting_at(
            site, tmp_path / f"db{k}", k, lambda s=share: attacker.run(TAKE, str(s)))
        if not fired:
            break
        st = (share / "b").lstat()
        assert st.st_uid == 0, (k, seen[k - 1], rep.problems)
        assert (share / "b").read_bytes() == data(1), (k, seen[k - 1])
        assert not list(vol.rglob(".dedupd-*")), (k, seen[k - 1])
    assert k > 5, k
