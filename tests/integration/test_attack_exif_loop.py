"""A crafted image in a backup share cannot hang `dedupd consolidate`.

exifread (3.5.1) follows an ISO box's 64-bit size without checking it: a HEIC box
whose size is 0 ends where it starts, and its box loop seeks back to the same box
forever. 40 bytes named IMG_1.heic in a share made every consolidation spin at
100% CPU, importing nothing (not even the share's other files). The EXIF read now
has a budget of file operations; past it the file has no EXIF date (its mtime
dates it) and the problem says so.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FTYP = struct.pack(">L", 16) + b"ftyp" + b"heic" + struct.pack(">L", 0)
# a box of 64-bit size 0: it ends where it starts
LOOP = struct.pack(">L", 1) + b"junk" + struct.pack(">Q", 0)
HEIC_LOOPS = [FTYP + LOOP + bytes(64),
              FTYP + struct.pack(">L", 24) + b"meta" + bytes(4) + LOOP + bytes(64)]


@pytest.mark.parametrize("body", HEIC_LOOPS, ids=["top", "meta"])
def test_a_heic_box_of_size_zero_does_not_hang_the_import(tmp_path: Path, body: bytes) -> None:
    src, arch = tmp_path / "src", tmp_path / "arch"
    src.mkdir()
    arch.mkdir()
    (src / "IMG_1.heic").write_bytes(body)
    other = os.urandom(9000)
    (src / "b.bin").write_bytes(other)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "db"}"\n'
                   f'[consolidate.v]\nsources = ["{src}"]\narchive = "{arch}"\n')
    try:
        r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "v", "-c", str(cfg),
                            "--json"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("dedupd consolidate still running after 60 s on a 40-byte image")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    got = {p.name: p.read_bytes() for p in arch.rglob("*") if p.is_file()
           and p.name != ".dedupd-consolidate.lock"}
    assert got == {"IMG_1.heic": body, "b.bin": other}
