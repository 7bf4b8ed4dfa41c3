"""`dedupd groups` and `dedupd where` across hosts sharing one real PostgreSQL inventory.

Two host names index the same directory: the same device and inode numbers, with
the contents swapped in place between the two scans (each file keeps its inode).
Keyed by st_dev, the second host would overwrite the first one's rows; keyed by
(host, filesystem), each keeps its own, and --all-hosts groups them exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIZE = 20_000
A, B, C = b"A" * SIZE, b"B" * SIZE, b"C" * SIZE


def dedupd(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "dedupd"), *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def run_json(*args: str | Path) -> dict:  # type: ignore[type-arg]
    return json.loads(dedupd(*args, "--json").stdout)  # type: ignore[no-any-return]


def config(tmp: Path, host: str, url: str) -> Path:
    p = tmp / f"{host}.toml"
    p.write_text(f'[database]\nurl = "{url}"\nhost = "{host}"\n')
    return p


def overwrite(path: Path, data: bytes) -> None:
    """New content, same inode."""
    with open(path, "r+b") as f:
        f.write(data)


def members(doc: dict) -> set[frozenset[tuple[str, str]]]:  # type: ignore[type-arg]
    return {frozenset((f["host"], f["path"]) for f in g["files"]) for g in doc["groups"]}


def test_groups_and_where_across_two_hosts_with_the_same_inodes(
        tmp_path: Path, pg_url: str) -> None:
    t = tmp_path / "t"
    t.mkdir()
    p1, p2, p3, q = (t / n for n in ("p1", "p2", "p3", "q"))
    for path, data in ((p1, A), (p2, B), (p3, C), (q, A)):
        path.write_bytes(data)
    inodes = {p: os.stat(p)[1:3] for p in (p1, p2, p3, q)}  # (ino, dev)
    nas, box = config(tmp_path, "nas1", pg_url), config(tmp_path, "backup-box", pg_url)
    assert run_json("scan", "-c", nas, t)["stats"]["groups"] == 1

    for path, data in ((p1, B), (p2, A), (q, B)):
        overwrite(path, data)
    assert {p: os.stat(p)[1:3] for p in (p1, p2, p3, q)} == inodes
    assert run_json("scan", "-c", box, t)["stats"]["groups"] == 1

    def at(host: str, *paths: Path) -> frozenset[tuple[str, str]]:
        return frozenset((host, str(p)) for p in paths)

    # each host alone: its own group, from its own rows
    assert members(run_json("groups", "-c", nas)) == {at("nas1", p1, q)}
    assert members(run_json("groups", "-c", box)) == {at("backup-box", p1, q)}
    # every host: what each one saw, exactly (C is on both, at one path and inode)
    every = run_json("groups", "-c", box, "--all-hosts")
    assert members(every) == {
        at("nas1", p1, q) | at("backup-box", p2),  # A
        at("nas1", p2) | at("backup-box", p1, q),  # B
        at("nas1", p3) | at("backup-box", p3),  # C
    }
    assert every["stats"] == {"groups": 3, "duplicate_files": 5,
                              "duplicate_bytes": 5 * SIZE}
    text = dedupd("groups", "-c", nas, "--all-hosts").stdout
    assert f"# 2 files of 19.5 KiB on backup-box, nas1\nbackup-box:{p3}\nnas1:{p3}\n" in text

    # where: the other copies of this file's content, on every host
    w = run_json("where", "-c", box, p2)
    assert w["host"] == "backup-box"
    assert {(c["host"], c["path"]) for c in w["copies"]} == {("nas1", str(p1)),
                                                            ("nas1", str(q))}
    # another host's file by HOST:PATH, answered from that host's rows
    w = run_json("where", "-c", box, f"nas1:{p2}")
    assert w["host"] == "nas1"
    assert {(c["host"], c["path"]) for c in w["copies"]} == {("backup-box", str(p1)),
                                                            ("backup-box", str(q))}
    out = dedupd("where", "-c", nas, f"backup-box:{p3}").stdout
    assert f"  nas1:{p3}\n" in out


def test_groups_is_empty_and_where_fails_on_an_unknown_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/i.db"
    doc = run_json("groups", "--db", url, "--all-hosts")
    assert doc["groups"] == [] and doc["stats"]["groups"] == 0
    lone = tmp_path / "lone"
    lone.write_bytes(b"x" * 100)
    r = dedupd("where", "--db", url, lone, check=False)
    assert r.returncode == 1 and "no other copy in the index" in r.stderr


@pytest.mark.parametrize("args", [["groups", "--min-size", "lots"]])
def test_usage_errors(args: list[str]) -> None:
    assert dedupd(*args, check=False).returncode == 2


def test_groups_from_the_index_equal_what_the_scan_reported(tmp_path: Path) -> None:
    """Without walking, the same groups (and hardlinks) the scan found, nothing read."""
    t = tmp_path / "t"
    for d in range(6):
        (t / f"d{d}").mkdir(parents=True)
        for k in range(8):
            n = (d * 8 + k) % 11
            (t / f"d{d}" / f"f{k}").write_bytes(b"%d-" % n * (400 + 37 * (n % 4)))
    os.link(t / "d0" / "f0", t / "d5" / "link")
    url = f"sqlite:///{tmp_path}/i.db"
    scanned = run_json("scan", "--db", url, t)
    listed = run_json("groups", "--db", url)

    # one path per inode in both; the scan's hardlinks are the index's other names
    assert {frozenset(g["paths"]) for g in scanned["groups"]} == {
        frozenset(f["path"] for f in g["files"]) for g in listed["groups"]}
    assert {h for g in scanned["groups"] for h in g.get("hardlinks", [])} == {
        h for g in listed["groups"] for f in g["files"] for h in f.get("hardlinks", [])}
    assert str(t / "d5" / "link") in json.dumps(listed)
    assert listed["stats"] == {k: scanned["stats"][k] for k in listed["stats"]}
    assert listed["stats"]["groups"] == 11
