"""`dedupd run --once --apply` of a plain volume while `dedupd scan`s of the same tree
record it, all on one shared index (PostgreSQL, and SQLite): every process exits 0 without a
traceback, no file's bytes change, and the tree ends fully linked.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dedupd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _contents(tree: Path) -> dict[str, str]:
    return {str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tree.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_run_and_scans_at_once(request: pytest.FixtureRequest, backend: str,
                               tmp_path: Path) -> None:
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
              else f"sqlite:///{tmp_path / 'db'}")
    tree = tmp_path / "t"
    for d in range(20):
        (tree / f"d{d}").mkdir(parents=True)
    for rnd in range(4):
        for i in range(60):  # each content in two directories
            data = os.urandom(3000 + i) + bytes([rnd])
            (tree / f"d{i % 20}" / f"r{rnd}-{i}").write_bytes(data)
            (tree / f"d{(i + 7) % 20}" / f"r{rnd}-{i}-copy").write_bytes(data)
        before = _contents(tree)
        procs = [_start("run", "--once", "--apply", "--settle", "0", "--min-size", "1",
                        "--json", "--db", url, str(tree))]
        procs += [_start("scan", "--json", "--min-size", "1", "--db", url, str(tree))
                  for _ in range(2)]
        procs += [_start("scan", "--json", "--min-size", "1", "--db", url,
                         str(tree / f"d{k}")) for k in (3, 9)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0 and "Traceback" not in err, (p.args, p.returncode, err)
        assert _contents(tree) == before
    final = subprocess.run([sys.executable, "-m", "dedupd", "run", "--once", "--apply",
                            "--settle", "0", "--min-size", "1", "--json", "--db", url,
                            str(tree)], capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    for rnd in range(4):
        for i in range(60):
            a = tree / f"d{i % 20}" / f"r{rnd}-{i}"
            b = tree / f"d{(i + 7) % 20}" / f"r{rnd}-{i}-copy"
            assert a.stat().st_ino == b.stat().st_ino, (a, b)
