"""Peer tools as oracles: their duplicate groups, parsed from real output."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.fixtures.components import require_tools
from tests.treegen import as_inode_groups


def jdupes_groups(*roots: Path) -> set[frozenset[tuple[int, int]]]:
    """Groups from `jdupes -r -0` (NUL separated, so any byte in a name survives)."""
    require_tools("jdupes")
    out = subprocess.run(["jdupes", "-r", "-q", "-0", *map(str, roots)], check=True,
                         capture_output=True, timeout=600).stdout
    groups = [[p for p in g.split(b"\0") if p] for g in out.split(b"\0\0")]
    return as_inode_groups([g for g in groups if len(g) > 1])


def dedupd_groups(doc: dict[str, object]) -> set[frozenset[tuple[int, int]]]:
    groups = doc["groups"]
    assert isinstance(groups, list)
    return as_inode_groups([[os.fsencode(p) for p in g["paths"]] for g in groups])


def scan_json(*args: str | Path, db: str) -> dict[str, object]:
    """Run the real CLI (`dedupd scan --json`) in a subprocess and parse its output."""
    exe = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "dedupd"
    if not exe.exists():
        exe = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "dedupd"
    r = subprocess.run([str(exe), "scan", "--json", "--db", db, *map(str, args)],
                       capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert isinstance(doc, dict)
    return doc
