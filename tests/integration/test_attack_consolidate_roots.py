"""A consolidation refuses a share or archive another user could point elsewhere.

Roots are resolved once (realpath) and worked beneath by handle: that guards what
lies below a root, not the way to it. A share configured inside a directory a
user owns (their home, say) was replaced by that user with a symlink to a
root-only directory: the run imported its files and, with prune_sources,
removed them, as root; an archive so placed received the copies wherever the
symlink pointed. Such a path is now a config error (exit 78) naming the
directory, and nothing is read, written or removed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("bent", ["sources", "archive"])
def test_a_root_in_a_users_directory_is_refused(tmp_path: Path, attacker: User,
                                                bent: str) -> None:
    home, victim = tmp_path / "home", tmp_path / "victim"
    home.mkdir()
    victim.mkdir()
    attacker.owns(home)
    reachable(home)
    secret = victim / "important.conf"
    secret.write_text("root's\n")
    secret.chmod(0o600)
    share, arch = tmp_path / "share", tmp_path / "archive"
    share.mkdir()
    arch.mkdir()
    (share / "photo.jpg").write_bytes(b"p" * 5000)
    planted = home / bent
    attacker.run('ln -s "$1" "$2"', str(victim), str(planted))
    srcs, archive = (planted, arch) if bent == "sources" else (share, planted)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{srcs}"]\narchive = "{archive}"\n'
                   'prune_sources = true\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert f"consolidate.v.{bent}" in r.stderr and f"{home} may be changed by another user" \
        in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["important.conf"]  # nothing written
    assert secret.read_text() == "root's\n"  # nor removed
    assert not list(arch.rglob("important.conf")) and (share / "photo.jpg").exists()
