"""An unchanged re-run of a hardlink volume (plain) loads no linker: its start-up
is most of its time (issue 16)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LINKERS = ("dedupd.dedup.hardlink", "dedupd.dedup.link_exec", "dedupd.dedup.crossdrive",
           "dedupd.fsops.copy")


def _run(tree: Path, db: Path) -> list[str]:
    """run --once --apply in a fresh interpreter; the linker modules it loaded."""
    code = ("import sys\n"
            "from dedupd.cli import main\n"
            f"sys.argv = ['dedupd', 'run', '--once', '--apply', '--settle', '0', "
            f"'--min-size', '1', '--db', 'sqlite:///{db}', {str(tree)!r}]\n"
            "rc = main()\n"
            f"print(rc, sorted(m for m in {LINKERS!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    rc, _, loaded = out.strip().splitlines()[-1].partition(" ")
    assert rc == "0", out
    return list(ast.literal_eval(loaded))


def test_an_unchanged_rerun_loads_no_linker(tmp_path: Path) -> None:
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
