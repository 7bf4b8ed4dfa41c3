"""prune_sources never removes a user's file whose archived copy another user owns.

A copy into the archive takes its source's owner (and mode), and a content already
in the archive is not copied again, whoever's source holds it. A user who put a
file with another user's bytes (a photo both have) into a share before them, or
at a path that sorts first, owns the archive's only copy; prune then removed the
other user's own file, and the owner of the archive copy could rewrite it at will
(chmod u+w: they own it): the other user's bytes were gone. Prune now keeps a
source whose archive file belongs to neither root nor the source's owner
(refused "archive-owner", reported as
every refused prune is), and still prunes the owner's own names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration
VICTIM = 4242  # another user: only a uid is needed


def test_a_victims_file_stays_when_the_attacker_owns_its_archive_copy(
        tmp_path: Path, attacker: User) -> None:
    share, arch = tmp_path / "share", tmp_path / "archive"
    (share / "a").mkdir(parents=True)
    (share / "v").mkdir()
    arch.mkdir()
    arch.chmod(0o755)
    attacker.owns(share / "a")
    reachable(share / "a")
    reachable(arch)
    photo = os.urandom(50_000)
    mine = share / "v" / "IMG_7.jpg"  # the victim's, private
    mine.write_bytes(photo)
    os.chown(mine, VICTIM, VICTIM)
    mine.chmod(0o600)
    os.chown(share / "v", VICTIM, VICTIM)
    theirs = share / "a" / "IMG_7.jpg"  # the same bytes, sorted first
    subprocess.run(["setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}",
                    "--clear-groups", "--", "sh", "-c", 'cat > "$1"', "x", str(theirs)],
                   input=photo, check=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.p]\nsources = ["{share}"]\narchive = "{arch}"\n'
                   'prune_sources = true\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "p", "-c", str(cfg),
                        "--json"], capture_output=True, text=True, timeout=300)
    rep = json.loads(r.stdout)
    (copy,) = arch.rglob("IMG_7.jpg")
    assert copy.stat().st_uid == attacker.uid  # the attacker's copy was imported
    assert not theirs.exists()  # the attacker's own name: pruned as before
    # the attacker rewrites "their" archive file
    attacker.run('chmod u+w "$1"; echo gone > "$1"', str(copy))
    assert mine.exists() and mine.read_bytes() == photo  # the victim's bytes survive
    assert [(x["path"], x["reason"]) for x in rep["refused"]] == [(str(mine), "archive-owner")]
    assert r.returncode == 0, r.stderr  # as any refused prune: the import itself is done
