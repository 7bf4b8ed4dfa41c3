"""File names with C1 control characters are shown escaped, never sent raw.

A user of a share names a file with U+009B (CSI) and U+009D (OSC), each encoded
in UTF-8 as two bytes (C2 9B, C2 9D). xterm and the Linux console act on these
as they do on ESC [ and ESC ]: clear the admin's screen, set the window title, or
(OSC 8) make a link. show_path escaped C0 controls and DEL only, so `dedupd scan`,
`groups` and `where` (as root) printed the name's controls to the terminal raw.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration

EVIL = "a\u009b2J\u009d0;pwned\u009cb.jpg"


def test_c1_controls_in_a_users_file_name_are_escaped(tmp_path: Path, attacker: User) -> None:
    share = tmp_path / "share"
    share.mkdir()
    attacker.owns(share)
    reachable(share)
    attacker.run('head -c 5000 /dev/zero > "$1/$2"; head -c 5000 /dev/zero > "$1/c.jpg"',
                 str(share), EVIL)
    db = f"sqlite:///{tmp_path / 'db'}"
    runs = [["scan", "--db", db, str(share)], ["groups", "--db", db],
            ["where", "--db", db, str(share / "c.jpg")]]
    for argv in runs:
        r = subprocess.run([sys.executable, "-m", "dedupd", *argv], capture_output=True,
                           timeout=120)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        for c1 in ("\u009b", "\u009c", "\u009d"):
            assert c1.encode() not in out, (argv, out)
        assert b"a\\x9b2J\\x9d0;pwned\\x9cb.jpg" in out, (argv, out)


def test_names_in_problem_details_are_escaped(tmp_path: Path, attacker: User) -> None:
    """A problem's detail may name a file too (consolidate's name-collision: the
    archive name taken); it was printed raw after the escaped path: a user's two
    files of one name and date, other bytes, put an ESC sequence (OSC: set the
    window title) and a forged line on the admin's terminal."""
    share, arch = tmp_path / "share", tmp_path / "archive"
    share.mkdir()
    arch.mkdir()
    attacker.owns(share)
    reachable(share)
    evil = "a\x1b]0;pwned\x07\nforged\u009b2J.jpg"
    attacker.run('for d in x y; do mkdir "$1/$d"; echo "$d$d$d" > "$1/$d/$2"; '
                 'touch -d 2020-05-01T12:00 "$1/$d/$2"; done', str(share), evil)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{share}"]\narchive = "{arch}"\n'
                   'on_name_collision = "skip"\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg)],
                       capture_output=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert b"name-collision" in out, out
    for raw in (b"\x1b", b"\x07", b"\nforged", "\u009b".encode()):
        assert raw not in out, out
    assert b"2020/05/a\\x1b]0;pwned\\x07\\nforged\\x9b2J.jpg is taken" in out, out
