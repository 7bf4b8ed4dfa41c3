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


def _imported(tmp_path: Path, attacker: User, names: tuple[str, ...], size: int,
              runs: int) -> tuple[Path, Path, list[int]]:
    """The attacker's share holds `names` (random bytes, sizes from `size` on, dated
    2020-05-01); `dedupd consolidate` into a fresh archive, `runs` times: (share,
    archive, files copied by each run). Every run must exit 0."""
    share, arch = tmp_path / "share", tmp_path / "archive"
    share.mkdir()
    arch.mkdir()
    attacker.owns(share)
    reachable(share)
    for i, n in enumerate(names):
        attacker.run(f'head -c {size + i} /dev/urandom > "$1/$2"; '
                     'touch -d 2020-05-01T12:00 "$1/$2"', str(share), n)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{share}"]\narchive = "{arch}"\n')
    copied = []
    for _ in range(runs):
        r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg),
                            "--json"], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        copied.append(json.loads(r.stdout)["stats"]["files_copied"])
    return share, arch, copied


def test_reserved_names_are_copied_once(tmp_path: Path, attacker: User) -> None:
    share, arch, copied = _imported(tmp_path, attacker, NAMES, 20000, runs=3)
    assert copied == [len(NAMES), 0, 0]
    got = sorted(p.name for p in (arch / "2020" / "05").iterdir())
    assert got == sorted("_" + n for n in NAMES)
    for n in NAMES:
        assert (arch / "2020" / "05" / ("_" + n)).read_bytes() == (share / n).read_bytes()


def test_reserved_names_at_name_max_are_imported(tmp_path: Path, attacker: User) -> None:
    """A user's 255-byte file named like dedupd's own temp copy or temp link: its "_"
    name must fit NAME_MAX too (the stem cut, the extension kept). Before: "_" + 255
    bytes, ENAMETOOLONG at its link, exit 1 at every run and never imported."""
    long = (".dedupd-copy." + "a" * 238 + ".tmp", ".dedupd-tmp-" + "b" * 243,
            "..dedupd-consolidate.lock." + "c" * 221 + ".partial")
    assert {len(n) for n in long} == {255}
    share, arch, copied = _imported(tmp_path, attacker, long, 30000, runs=2)
    assert copied == [len(long), 0]
    month = arch / "2020" / "05"
    got = {p.name: p.read_bytes() for p in month.iterdir()}
    assert all(n.startswith("_") and len(n) == 255 for n in got), list(got)
    assert sorted(got.values()) == sorted((share / n).read_bytes() for n in long)
    assert sorted(n[-4:] for n in got) == [".tmp", "bbbb", "tial"]


def test_reserved_names_at_name_max_render_within_it() -> None:
    """Both ways a name is rendered (render: any layout; Renderer: "{year}/.../{name}")."""
    from datetime import datetime

    from dedupd.consolidate.layout import NAME_MAX, Fields, render, renderer

    name = b".dedupd-copy." + b"\xc3\xa9" * 119 + b".tmp"
    assert len(name) == 255
    when = datetime(2020, 5, 1)
    for got in (render("{name}", "undated", Fields(name, b"/s", when)),
                renderer("{year}/{name}", "undated").render(name, b"/s", when)[5:]):
        assert got.startswith(b"_.dedupd-copy.") and got.endswith(b".tmp"), got
        assert len(got) <= NAME_MAX
        got.decode()  # cut at a character boundary
