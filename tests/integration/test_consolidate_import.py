"""`dedupd import`: real jdupes -j and rmlint -o json reports (made here, on a real tree),
and a recorded czkawka sample; every claim is re-checked against the files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.components import require_tools
from tests.fixtures.consolidate import dedupd, write

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).parent.parent / "data" / "czkawka_dup_sample.json"


def make_tree(root: Path) -> None:
    big, small = os.urandom(5000), os.urandom(300)
    for rel in ("a", "b", "sub/c", "d"):
        write(root / rel, big, "2020-05-05")
    for rel in ("x", "y", "z"):
        write(root / rel, small, "2020-05-05")
    write(root / "lonely", os.urandom(777))


def spoil(root: Path) -> None:
    """What happens between the report and the import: nothing may be trusted."""
    with open(root / "b", "ab") as f:  # grew
        f.write(b"!")
    data = bytearray((root / "sub/c").read_bytes())  # same size, other bytes, newer mtime
    data[100] ^= 0xFF
    (root / "sub/c").write_bytes(bytes(data))
    t = os.stat(root / "a").st_mtime + 3600
    os.utime(root / "sub/c", (t, t))
    os.unlink(root / "y")  # gone


def run_import(report: Path, tmp: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    r = dedupd("import", str(report), "--db", f"sqlite:///{tmp / 'db.sqlite'}", "--json",
               *extra)
    return json.loads(r.stdout)


def groups_of(doc: dict, root: Path) -> set[frozenset[str]]:  # type: ignore[type-arg]
    return {frozenset(os.path.relpath(p, root) for p in g["paths"]) for g in doc["groups"]}


def reasons_of(doc: dict, root: Path) -> dict[str, str]:  # type: ignore[type-arg]
    return {os.path.relpath(s["path"], root): s["reason"] for s in doc["skipped"]}


EXPECTED = {frozenset({"a", "d"}), frozenset({"x", "z"})}


def test_import_real_jdupes_report(tmp_path: Path) -> None:
    require_tools("jdupes")
    root = tmp_path / "tree"
    make_tree(root)
    # relative paths, as jdupes prints what it was given: --base resolves them
    out = subprocess.run(["jdupes", "-r", "-j", "."], cwd=root, capture_output=True,
                         check=True, timeout=120).stdout
    report = tmp_path / "jdupes.json"
    report.write_bytes(out)
    assert json.loads(out)["matchSets"]  # the real tool found the groups
    spoil(root)
    doc = run_import(report, tmp_path, "--base", str(root))
    assert doc["format"] == "jdupes"
    assert groups_of(doc, root) == EXPECTED
    assert reasons_of(doc, root) == {"b": "changed", "sub/c": "differs", "y": "missing"}
    # The verified hashes are in the index: a scan of the tree reads nothing more.
    scan = json.loads(dedupd("scan", str(root), "--db", f"sqlite:///{tmp_path / 'db.sqlite'}",
                             "--json").stdout)
    assert scan["stats"]["bytes_read"] == 0
    assert {frozenset(os.path.relpath(p, root) for p in g["paths"])
            for g in scan["groups"]} == EXPECTED


def test_import_real_rmlint_report(tmp_path: Path) -> None:
    require_tools("rmlint")
    root = tmp_path / "tree"
    make_tree(root)
    # names jdupes 1.21.3 -j spins on (non-UTF-8, newlines) go to rmlint: raw bytes in its JSON
    odd = [b"caf\xe9.dat", b"new\nline.dat"]
    for name in odd:
        write(os.path.join(os.fsencode(root), name), (root / "x").read_bytes(), "2020-05-05")
    report = tmp_path / "rmlint.json"
    # rmlint replaces each output file by rename: a summary aimed at /dev/null would
    # turn the machine's /dev/null into a regular file
    summary = tmp_path / "rmlint.summary"
    subprocess.run(["rmlint", "-o", f"json:{report}", "-o", f"summary:{summary}", str(root)],
                   cwd=tmp_path, capture_output=True, check=True, timeout=120)
    spoil(root)
    doc = run_import(report, tmp_path, "--format", "rmlint")
    assert doc["format"] == "rmlint"
    assert groups_of(doc, root) == {frozenset({"a", "d"}),
                                    frozenset({"x", "z", *map(os.fsdecode, odd)})}
    # rmlint records mtimes: the rewritten file is caught as changed before it is read
    assert reasons_of(doc, root) == {"b": "changed", "sub/c": "changed", "y": "missing"}


def test_import_czkawka_sample_and_scope(tmp_path: Path) -> None:
    # czkawka cannot be installed here: tests/data holds a report in the shape its
    # `dup` JSON save has (size -> groups -> entries), with @ROOT@/@MTIME_*@ filled in.
    root = tmp_path / "tree"
    make_tree(root)
    text = SAMPLE.read_text().replace("@ROOT@", str(root))
    for name in ("a", "b", "c", "d", "x"):
        rel = "sub/c" if name == "c" else name
        text = text.replace(f"@MTIME_{name.upper()}@", str(int(os.stat(root / rel).st_mtime)))
    report = tmp_path / "czkawka.json"
    report.write_text(text)
    spoil(root)
    doc = run_import(report, tmp_path)  # format detected from the shape
    assert doc["format"] == "czkawka"
    assert groups_of(doc, root) == {frozenset({"a", "d"})}
    assert reasons_of(doc, root) == {"b": "changed", "sub/c": "changed", "gone": "missing",
                                     "x": "unmatched"}
    # --consolidation limits the import to that consolidation's trees
    other = tmp_path / "other"
    other.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[consolidate.t]\nsources = ["{other}"]\narchive = "{tmp_path}/arch"\n')
    doc = run_import(report, tmp_path, "-c", str(cfg), "--consolidation", "t")
    assert set(reasons_of(doc, root).values()) == {"outside"}


def test_import_rmlint_report_without_checksums(tmp_path: Path) -> None:
    """A file whose only twin is its own hardlink: rmlint reads neither and writes
    its entries without "checksum"; the rest of the report still imports."""
    require_tools("rmlint")
    root = tmp_path / "tree"
    make_tree(root)
    write(root / "h1", os.urandom(4000), "2020-05-05")
    os.link(root / "h1", root / "h2")
    report = tmp_path / "rmlint.json"
    summary = tmp_path / "rmlint.summary"
    subprocess.run(["rmlint", "-o", f"json:{report}", "-o", f"summary:{summary}", str(root)],
                   cwd=tmp_path, capture_output=True, check=True, timeout=120)
    entries = [x for x in json.loads(report.read_text())
               if isinstance(x, dict) and x.get("type") == "duplicate_file"]
    unsummed = {os.path.relpath(x["path"], root) for x in entries if "checksum" not in x}
    assert unsummed == {"h1", "h2"}  # the case as the real tool writes it
    doc = run_import(report, tmp_path, "--format", "rmlint")
    assert doc["format"] == "rmlint"
    assert groups_of(doc, root) == {frozenset({"a", "b", "sub/c", "d"}),
                                    frozenset({"x", "y", "z"})}
    # the hardlink pair is read as one file: nothing to verify, nothing to import
    assert reasons_of(doc, root) == {"h2": "hardlink", "h1": "unmatched"}
    assert doc["stats"]["groups_in_report"] == 3
