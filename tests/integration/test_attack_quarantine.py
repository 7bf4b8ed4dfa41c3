"""The quarantine directory (quarantine_dir: a replaced duplicate keeps a hardlink
there) is made by dedupd, 0700, where it is missing. A user who may create names
where it will be (a shared sticky directory) creates it first, as their own: root
must not then put hardlinks of other users' files there, where that user can list,
open and keep them (files of a private 0700 directory would become readable).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable
from tests.integration import test_attack_session as session
from tests.integration.test_attacker import data, refusals, run_pass

pytestmark = pytest.mark.integration


def test_quarantine_dir_made_by_another_user_gets_no_links(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path) -> None:
    site, vol = session.plain_site(loopfs, tmp_path)
    share = vol / "share"
    share.mkdir()
    share.chmod(0o1777)
    private = share / "root-private"
    private.mkdir(mode=0o700)
    secret = data(9)
    for n in ("a", "b"):
        (private / n).write_bytes(secret)
        (private / n).chmod(0o644)  # private by its directory only
    reachable(share)
    q = share / ".dedupd-quarantine"
    attacker.run('mkdir "$1" && chmod 0777 "$1"', str(q))
    site.volume["quarantine_dir"] = str(q)
    rep = run_pass(site, tmp_path / "db")
    # the user reads whatever root put in its directory
    r = subprocess.run(["setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}",
                        "--clear-groups", "--", "sh", "-c", 'cat "$1"/* 2>/dev/null; true',
                        "attacker", str(q)], capture_output=True, timeout=60)
    assert secret not in r.stdout, rep.problems
    assert not list(q.iterdir()), rep.problems
    assert "path_changed" in refusals(rep), rep.problems
    assert all((private / n).read_bytes() == secret for n in ("a", "b"))
