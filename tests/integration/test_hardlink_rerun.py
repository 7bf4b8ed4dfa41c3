"""An unchanged re-run of a hardlink volume (plain) loads no linker: its start-up
is most of its time (issue 16)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

LINKERS = ("dedupd.dedup.hardlink", "dedupd.dedup.link_exec", "dedupd.dedup.crossdrive",
           "dedupd.fsops.durable")
# the hashing engine and side-by-side reader: not for size groups settled apart
HASHING = ("dedupd.hashing.engine", "dedupd.dedup.together", "concurrent.futures")


def _run(tree: Path, db: Path, watched: tuple[str, ...] = LINKERS) -> list[str]:
    """run --once --apply in a fresh interpreter; the watched modules it loaded."""
    code = ("import sys\n"
            "from dedupd.cli import main\n"
            f"sys.argv = ['dedupd', 'run', '--once', '--apply', '--settle', '0', "
            f"'--min-size', '1', '--db', 'sqlite:///{db}', {str(tree)!r}]\n"
            "rc = main()\n"
            f"print(rc, sorted(m for m in {watched!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    rc, _, loaded = out.strip().splitlines()[-1].partition(" ")
    assert rc == "0", out
    return list(ast.literal_eval(loaded))


def test_an_unchanged_rerun_loads_no_linker_nor_hashing_engine(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "a").mkdir(parents=True)
    (tree / "b").mkdir()
    for d in ("a", "b"):
        (tree / d / "same").write_bytes(b"s" * 5000)
    (tree / "a" / "other").write_bytes(b"o" * 5000)  # same size, other bytes
    db = tmp_path / "i.db"
    # the first pass links a/same and b/same (a pool's linker stays out)
    assert _run(tree, db) == sorted(m for m in LINKERS if m != "dedupd.dedup.crossdrive")
    assert (tree / "a" / "same").stat().st_ino == (tree / "b" / "same").stat().st_ino
    assert _run(tree, db) == []
    # a/other and the link's inode: one size, both hashes known and unlike
    assert _run(tree, db, HASHING) == []
    (tree / "b" / "new").write_bytes(b"n" * 5000)  # not hashed yet: the engine runs
    assert _run(tree, db, HASHING) == sorted(HASHING)


def _pass(tree: Path, db: Path) -> dict[str, Any]:
    """One `run --once --apply` of tree as a plain volume: its JSON report."""
    out = subprocess.run([sys.executable, "-m", "dedupd", "run", "--once", "--apply",
                          "--settle", "0", "--min-size", "1", "--json", "--db",
                          f"sqlite:///{db}", str(tree)], check=True, capture_output=True,
                         text=True).stdout
    report: dict[str, Any] = json.loads(out)["volumes"][0]
    return report


def _linked(tree: Path, *names: str) -> bool:
    return len({(tree / n).stat().st_ino for n in names}) == 1


def test_a_rerun_skips_unchanged_directories_and_still_finds_every_change(
        tmp_path: Path) -> None:
    """Directories listing as the index stored them are skipped (issue 16): nothing
    of them is recorded, their files' candidates come from the index. A write in
    place (same size, mtime put back), a new name and a link broken by the user each
    change a listing, and their duplicates in skipped directories are still found."""
    tree, db = tmp_path / "t", tmp_path / "i.db"
    x, y, z = b"x" * 5000, b"y" * 6000, b"z" * 6000
    for name, data in (("d1/a", x), ("d2/b", x), ("d3/c", z), ("d4/e", y)):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    assert [a["action"] for a in _pass(tree, db)["actions"]] == ["hardlink"]
    assert _linked(tree, "d1/a", "d2/b")
    _pass(tree, db)  # the linked directories list anew: recorded, digests stored
    quiet = _pass(tree, db)
    c = quiet["counters"]
    assert (c["dirs_unchanged"], c["files_unchanged"]) == (5, 4), c
    assert not c.get("files_new") and not c.get("files_changed") and not quiet["actions"]

    # written in place with d3/c's bytes, size and mtime as before: ctime moved
    st = (tree / "d4/e").stat()
    with open(tree / "d4/e", "r+b") as f:
        f.write(z)
    os.utime(tree / "d4/e", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = _pass(tree, db)
    assert _linked(tree, "d3/c", "d4/e"), r  # d3 was skipped: its file from the index
    assert r["counters"]["dirs_unchanged"] >= 3

    _pass(tree, db)
    (tree / "d3/f").write_bytes(x)  # a new name: d3 lists anew; d1, d2 do not
    r = _pass(tree, db)
    assert _linked(tree, "d1/a", "d2/b", "d3/f"), r

    _pass(tree, db)
    (tree / "d2/b.copy").write_bytes(x)  # the user breaks the link with a copy
    os.replace(tree / "d2/b.copy", tree / "d2/b")
    assert not _linked(tree, "d1/a", "d2/b")
    r = _pass(tree, db)
    assert _linked(tree, "d1/a", "d2/b", "d3/f"), r
    assert (tree / "d2/b").read_bytes() == x


def test_force_rescan_records_every_file(tmp_path: Path) -> None:
    """--force-rescan lists and records every directory, digests or not."""
    tree, db = tmp_path / "t", tmp_path / "i.db"
    for name in ("d1/a", "d2/b"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(name.encode() * 1000)
    _pass(tree, db)
    assert _pass(tree, db)["counters"]["dirs_unchanged"] == 3
    out = subprocess.run([sys.executable, "-m", "dedupd", "run", "--once", "--apply",
                          "--force-rescan", "--settle", "0", "--min-size", "1", "--json",
                          "--db", f"sqlite:///{db}", str(tree)], check=True,
                         capture_output=True, text=True).stdout
    c = json.loads(out)["volumes"][0]["counters"]
    assert "dirs_unchanged" not in c and c["files_unchanged"] == 2, c


def test_only_names_with_the_temp_prefix_are_our_own(tmp_path: Path) -> None:
    """A leftover temporary name of ours is never linked (own_files_skipped); a file
    under a directory whose name merely holds the prefix is the user's and is."""
    tree, db = tmp_path / "t", tmp_path / "i.db"
    data = b"d" * 7000
    for name in ("a/f", "a/.dedupd-tmp-0123456789abcdef", ".dedupd-tmp-dir/g"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    r = _pass(tree, db)
    assert r["counters"]["own_files_skipped"] == 1, r
    assert _linked(tree, "a/f", ".dedupd-tmp-dir/g")
    assert not _linked(tree, "a/f", "a/.dedupd-tmp-0123456789abcdef")
