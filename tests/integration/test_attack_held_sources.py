"""Consolidation reads its sources through held directory handles (fsops.source.SourceDirs:
a directory is resolved once, then each of its files is opened by its final name
relative to the handle). A real unprivileged user acts on their own directory once
its handle is held (at the read of its second file): the directory swapped for a
symlink to a root-only directory holding a file of the same name and size, moved
out of the share with a hardlink of their own put in the file's place, the file
swapped for a symlink to the root-only file, or the directory made unreadable.

Whatever is read through a held handle must be the indexed inode, unchanged: the
archive then holds only contents the share had when it was indexed (the attacker's
own files, wherever their directory went), never the root-only file, never a
replacement, and nothing outside the share is written.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dedupd import testpoints
from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index.store import Store
from tests.fixtures.attacker import User, reachable
from tests.integration.test_attacker import data, manifest

pytestmark = pytest.mark.integration

Act = Callable[[User, Path, Path, Path], None]  # (attacker, d, outside, private)


def symlinked(atk: User, d: Path, _out: Path, private: Path) -> None:
    atk.run('mv "$1" "$1.real" && ln -s "$2" "$1"', str(d), str(private))


def moved_out(atk: User, d: Path, out: Path, _private: Path) -> None:
    # d leaves the share (same filesystem); a new d holds a hardlink of the attacker's
    # own file outside under the name about to be read
    atk.run('mv "$1" "$2/d" && mkdir "$1" && ln "$2/mine" "$1/b.bin"', str(d), str(out))


def file_symlinked(atk: User, d: Path, _out: Path, private: Path) -> None:
    atk.run('rm "$1/b.bin" && ln -s "$2/b.bin" "$1/b.bin"', str(d), str(private))


def file_relinked(atk: User, d: Path, out: Path, _private: Path) -> None:
    atk.run('rm "$1/b.bin" && ln "$2/mine" "$1/b.bin"', str(d), str(out))


def unreadable(atk: User, d: Path, _out: Path, _private: Path) -> None:
    atk.run('chmod 000 "$1"', str(d))


# act -> whether b.bin (the indexed inode, read through the held handle) is copied
ACTS: dict[str, tuple[Act, bool]] = {
    "symlinked": (symlinked, True), "moved_out": (moved_out, True),
    "file_symlinked": (file_symlinked, False), "file_relinked": (file_relinked, False),
    "unreadable": (unreadable, True),
}


def _sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


@pytest.mark.parametrize("act", list(ACTS))
def test_a_held_source_directory_reads_only_indexed_inodes(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path, act: str) -> None:
    mnt = loopfs("ext4", "256M")
    share, archive, private, out = (mnt / n for n in ("share", "archive", "private", "out"))
    d = share / "atk" / "d"
    d.mkdir(parents=True)
    archive.mkdir()
    private.mkdir(mode=0o700)
    (private / "b.bin").write_bytes(data(7))  # root's: same name and size as the attacker's
    out.mkdir()
    (out / "mine").write_bytes(data(9))  # the attacker's own file outside the share
    for n, seed in (("a.bin", 3), ("b.bin", 4)):
        (d / n).write_bytes(data(seed))
    attacker.owns(share / "atk", d, d / "a.bin", d / "b.bin", out, out / "mine")
    reachable(d)
    reachable(out)
    before = manifest(private)
    fired: list[bytes] = []
    do, b_copied = ACTS[act]

    def hook(_point: str, path: bytes) -> None:
        if path.startswith(bytes(d) + b"/"):
            fired.append(path)
            if len(fired) == 2:  # the directory's handle is held since the first
                do(attacker, d, out, private)

    db = tmp_path / "c.db"
    cfg = ConsolidateConfig("c", (share,), archive, layout="{name}")
    store = Store(f"sqlite:///{db}")
    try:
        with testpoints.acting(("read.open",), hook):
            rep: dict[str, Any] = consolidate(store, cfg, Options()).as_json()
    finally:
        store.close()
    assert len(fired) >= 2, fired
    assert manifest(private) == before
    copied = {_sha(p.read_bytes()) for p in archive.rglob("*")
              if p.is_file() and not p.name.startswith(".dedupd")}
    assert _sha(data(7)) not in copied and _sha(data(9)) not in copied, rep
    # the first file was read before the act; b.bin only if it is still its inode
    assert _sha(data(3)) in copied
    assert (_sha(data(4)) in copied) == b_copied, rep["problems"]
    if not b_copied:
        assert {p["reason"] for p in rep["problems"]} & {"path_changed", "changed"}, rep


_LOW_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from pathlib import Path
from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index.store import Store
share, archive, db = map(Path, sys.argv[1:4])
store = Store(f"sqlite:///{db}")
rep = consolidate(store, ConsolidateConfig("c", (share,), archive), Options()).as_json()
store.close()
print(len(rep["problems"]), rep["problems"][:3])
"""


def test_files_spread_over_many_archive_directories_under_a_low_open_file_limit(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path) -> None:
    """Where the open-file limit cannot be raised (hard limit 1024), the attacker dates
    400 small files of their own a month apart: under the default layout each goes to
    its own archive directory, and a batch holds each copy's temp file, its source and
    its directory open. The import must still finish, every file imported."""
    mnt = loopfs("ext4", "256M")
    share, archive = mnt / "share", mnt / "archive"
    (share / "atk").mkdir(parents=True)
    archive.mkdir()
    attacker.owns(share / "atk")
    reachable(share / "atk")
    attacker.run('i=0; while [ $i -lt 400 ]; do f="$1/f$i"; echo "content $i" > "$f"; '
                 'touch -d "@$((86400 * 31 * i))" "$f"; i=$((i + 1)); done', str(share / "atk"))
    r = subprocess.run([sys.executable, "-c", _LOW_LIMIT, str(share), str(archive),
                        str(tmp_path / "c.db")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("0 "), r.stdout
    got = sorted(p.read_text() for p in archive.rglob("f*") if p.is_file())
    assert got == sorted(f"content {i}\n" for i in range(400))
