"""A source named like dedupd's own archive files is archived once, under a "_" name.

The archive's walk skips dedupd's temp copies (.dedupd-copy.*.tmp), its lock, the
lock's replacement temp (..dedupd-consolidate.lock.*.partial) and the linker's
temp links (.dedupd-tmp-*), so a copy placed under such a name was
never seen as archive content: a user's file so named was copied again at every
run (name (2), (3), ...: the archive grew by its size each time, without end) and
swept away after an interrupted run. Such a name now gets a "_" in front.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration
NAMES = (".dedupd-copy.evil.tmp", ".dedupd-consolidate.lock", ".dedupd-tmp-evil",
         "..dedupd-consolidate.lock.0badf00d.partial")


def test_reserved_names_are_copied_once(tmp_path: Path, attacker: User) -> None:
    share, arch = tmp_path / "share", tmp_path / "archive"
    share.mkdir()
    arch.mkdir()
    attacker.owns(share)
    reachable(share)
    for i, n in enumerate(NAMES):
        attacker.run(f'head -c {20000 + i} /dev/urandom > "$1/$2"; '
                     'touch -d 2020-05-01T12:00 "$1/$2"', str(share), n)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{share}"]\narchive = "{arch}"\n')
    copied = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg),
                            "--json"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        copied.append(json.loads(r.stdout)["stats"]["files_copied"])
    assert copied == [len(NAMES), 0, 0]
    got = sorted(p.name for p in (arch / "2020" / "05").iterdir())
    assert got == sorted("_" + n for n in NAMES)
    for n in NAMES:
        assert (arch / "2020" / "05" / ("_" + n)).read_bytes() == (share / n).read_bytes()
