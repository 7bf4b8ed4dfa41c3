"""A setuid or setgid source whose owner the archive copy cannot take loses those bits.

A copy made by root takes its source's owner with fchown; where that fails (no
CAP_CHOWN, an id the archive's filesystem cannot store) the copy stays root's.
It used to get the source's mode all the same: a user's setuid program became a
root-owned setuid program in the archive. cp -p clears the bits in that case too.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration


def test_a_copy_that_cannot_take_the_owner_is_not_setuid(tmp_path: Path, attacker: User) -> None:
    share, arch = tmp_path / "share", tmp_path / "archive"
    share.mkdir()
    arch.mkdir()
    attacker.owns(share)
    reachable(share)
    attacker.run('head -c 5000 /dev/urandom > "$1/prog"; chmod 6755 "$1/prog"; '
                 'touch -d 2020-05-01T12:00 "$1/prog"', str(share))
    assert os.stat(share / "prog").st_mode & (stat.S_ISUID | stat.S_ISGID)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{share}"]\narchive = "{arch}"\n')
    # root without CAP_CHOWN: its fchown to the user's uid fails
    r = subprocess.run(["setpriv", "--bounding-set=-chown", "--", sys.executable, "-m",
                        "dedupd", "consolidate", "v", "-c", str(cfg), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["files_copied"] == 1
    st = os.stat(arch / "2020" / "05" / "prog")
    assert st.st_uid == 0
    assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert stat.S_IMODE(st.st_mode) == 0o755
    assert (arch / "2020" / "05" / "prog").read_bytes() == (share / "prog").read_bytes()
