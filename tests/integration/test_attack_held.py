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


# test_attack_session.SWAPS, each move tried on its own: while d/b is held (missing)
# the files swap moves e/b to the free name d/b (a save at the missing name).
SWAPS = {
    "files": ('for m in "$1/b $1/t" "$2/b $1/b" "$1/t $2/b"; do '
              'mv $m 2>/dev/null || true; done', ("d", "e")),
    "dirs": session.SWAPS["dirs"],
}


@pytest.mark.parametrize("fallback", ["1", "noreplace"])
@pytest.mark.parametrize("swap", list(SWAPS))
def test_names_swapped_at_every_point_with_the_held_swap(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, fallback: str, swap: str) -> None:
    """test_attack_session's swaps (two of root's files trade names in the user's
    directory; the user's two directories trade places) at every test point, where
    names cannot be exchanged: every content of root's is still somewhere, root's, only
    equal bytes share an inode, and no file is left hidden under a name of ours."""
    monkeypatch.setenv("DEDUPD_TEST_NO_EXCHANGE", fallback)
    site, vol = session.plain_site(loopfs, tmp_path)
    script, args = SWAPS[swap]
    k = 0
    while True:
        k += 1
        d, _e = session.root_files_in_user_dirs(vol, attacker)
        want = session.contents_under(vol)
        paths = tuple(str(d.parent / a) for a in args)
        fired, seen, rep = session.pass_acting_at(
            site, tmp_path / f"db{k}", k, lambda p=paths: attacker.run(script, *p))
        if not fired:
            break
        # a set: a file moved to the held name wins it, as a save would (the held
        # duplicate, with the kept file's bytes, goes)
        assert set(session.contents_under(vol)) == set(want), (k, seen[k - 1], rep.problems)
        assert not list(vol.rglob(".dedupd-*")), (k, seen[k - 1], rep.problems)
        session.assert_roots_one_content_per_inode(vol)
    assert k > 10, k


# The user plants, for each temp link of ours it sees in d, the hold name the swap
# will use (.dedupd-hold-<the temp name's random part>): a file, a directory, or a
# symlink to root's private file.
PLANT = {
    "file": 'echo mine > "$1/.dedupd-hold-$r"',
    "dir": 'mkdir "$1/.dedupd-hold-$r" && echo mine > "$1/.dedupd-hold-$r/f"',
    "symlink": 'ln -s "$2" "$1/.dedupd-hold-$r"',
}


@pytest.mark.parametrize("fallback", ["1", "noreplace"])
@pytest.mark.parametrize("kind", list(PLANT))
def test_hold_name_planted_at_every_point(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, fallback: str, kind: str) -> None:
    """The hold name is the temp name's random part, and the temp link is in the
    listing before the hold: the user plants that name at the k-th point, for every
    k. Root's files keep every byte under their names (d/b: root's, X), root's
    private file outside is untouched, and a hold name left is the user's own (a file
    or symlink there is replaced by the hold where a rename cannot refuse to)."""
    monkeypatch.setenv("DEDUPD_TEST_NO_EXCHANGE", fallback)
    site, vol = session.plain_site(loopfs, tmp_path)
    secret = site.outside / "secret"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(data(8))
    script = ('for t in "$1"/.dedupd-tmp-*; do [ -e "$t" ] || continue; '
              f'r=${{t##*/.dedupd-tmp-}}; {PLANT[kind]} 2>/dev/null || true; done')
    k, planted = 0, False
    while True:
        k += 1
        d, e = session.root_files_in_user_dirs(vol, attacker)
        fired, seen, rep = session.pass_acting_at(
            site, tmp_path / f"db{k}", k,
            lambda d=d: attacker.run(script, str(d), str(secret)))
        if not fired:
            break
        for x, n, want in ((d, "a", 1), (d, "b", 1), (e, "a", 1), (e, "b", 5)):
            st = (x / n).lstat()
            assert st.st_uid == 0 and (x / n).read_bytes() == data(want), \
                (k, seen[k - 1], rep.problems)
        for h in vol.rglob(".dedupd-hold-*"):
            planted = True
            assert h.lstat().st_uid == attacker.uid, (k, h, seen[k - 1])
        assert not list(vol.rglob(".dedupd-tmp-*")), (k, seen[k - 1])
        assert secret.read_bytes() == data(8)
    # without any renameat2 flag the hold's rename replaces a file or symlink there
    assert k > 10 and planted != (kind != "dir" and fallback == "1"), (k, planted)
