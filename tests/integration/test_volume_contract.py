"""The volume-pass contract, one suite run over every kind on its real filesystem.

Kinds: btrfs and xfs (loop devices, extent dedupe), zfs (zfs-fuse, hardlinks;
"zfs-diff" is the same with the OpenZFS emulator's `zfs diff`, so later passes
take the snapshot-diff path), plain (tmpfs, hardlinks) and pool (mergerfs over
two tmpfs branches, cross-drive). Each test builds the same small tree, whose true duplicate
groups are known, and checks one promise every pass makes, whatever its kind:

- a dry run changes nothing on disk (paths, inodes, link counts, times,
  bytes; on extent kinds the physical extents, so no sharing either);
- it finds exactly the tree's duplicate groups (the same groups on every kind);
- a rescan of an unchanged volume reads no bytes;
- after kill -9 right after a destructive step (the journal's test hook
  DEDUPD_TEST_KILL_AT_STEP), the next pass recovers: every path keeps its
  bytes, nothing stays half done, and the dedupe gets finished;
- every counter a pass emits is documented in docs/status.md.

The passes run through the real CLI (`dedupd run --once`), the killed one in a
child process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.linktree import blob, config, content, dedupd, dedupd_here, manifest
from tests.integration.linktree import unfinished_ops as journal_unfinished

pytestmark = pytest.mark.integration

KINDS = ("btrfs", "xfs", "zfs", "zfs-diff", "plain", "pool")
EXTENT_KINDS = ("btrfs", "xfs")
MIN_SIZE = 4096
K = 1024
DOCS = Path(__file__).resolve().parents[2] / "docs" / "status.md"


@dataclass(frozen=True)
class Spec:
    """One file of the tree: where, what bytes, and (pool only) which branch."""

    rel: str
    data: bytes
    branch: int = 0


def _tree() -> list[Spec]:
    head_twin = blob(50, 256 * K)[:-4 * K] + blob(51, 4 * K)  # same head, other tail
    return [
        # three copies in three directories, one name with a space
        Spec("a/one.bin", blob(1, 64 * K)), Spec("b/one copy.bin", blob(1, 64 * K), 1),
        Spec("c/deep/one.bin", blob(1, 64 * K)),
        # two copies on one branch
        Spec("a/two.bin", blob(2, 200 * K)), Spec("c/two.bin", blob(2, 200 * K)),
        # two copies and a stranger of the same size (heads differ)
        Spec("b/three.bin", blob(3, 12 * K), 1), Spec("c/three.bin", blob(3, 12 * K)),
        Spec("a/stranger.bin", blob(4, 12 * K), 1),
        # two copies and a file with the same head and another tail
        Spec("a/four.bin", blob(50, 256 * K)), Spec("b/vier-ü.bin", blob(50, 256 * K), 1),
        Spec("c/four-twin.bin", head_twin, 1),
        # a size that is not a multiple of the block size
        Spec("five.bin", blob(5, 50_001)), Spec("b/five.bin", blob(5, 50_001), 1),
        # unique files, small duplicates below min_size, empty files
        Spec("u/unique-1.bin", blob(6, 40 * K)), Spec("u/unique-2.bin", blob(7, 72 * K), 1),
        Spec("small/x.txt", blob(8, 1000)), Spec("small/y.txt", blob(8, 1000), 1),
        Spec("empty-1", b""), Spec("empty-2", b"", 1),
    ]


TREE = _tree()
GROUPS = {frozenset({"a/one.bin", "b/one copy.bin", "c/deep/one.bin"}),
          frozenset({"a/two.bin", "c/two.bin"}),
          frozenset({"b/three.bin", "c/three.bin"}),
          frozenset({"a/four.bin", "b/vier-ü.bin"}),
          frozenset({"five.bin", "b/five.bin"})}


@dataclass(frozen=True)
class Vol:
    kind: str
    roots: tuple[Path, ...]  # where the files live: the volume, or the pool's branches
    view: Path  # the tree as users see it (the mergerfs mount for a pool)
    cfg: Path
    db: Path
    dataset: str | None = None
    diff: bool = False  # zfs with `zfs diff`: passes after the first read the diff

    def build(self, specs: list[Spec]) -> None:
        for s in specs:
            p = self.roots[s.branch % len(self.roots)] / s.rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(s.data)
        _sync(self.roots)

    def rel(self, shown: str) -> str:
        p = os.fsencode(shown)
        for r in self.roots:
            base = os.fsencode(r).rstrip(b"/") + b"/"
            if p.startswith(base):
                return os.fsdecode(p[len(base):])
        raise AssertionError(f"{shown} is outside the volume {self.roots}")


def _sync(roots: tuple[Path, ...]) -> None:
    # Delayed allocation: a file's extents exist only after writeback, so sync
    # before taking a manifest (the pass itself syncs a BTRFS volume).
    for r in roots:
        subprocess.run(["sync", "-f", str(r)], check=True)


@pytest.fixture(params=KINDS)
def vol(request: Any, tmp_path: Path) -> Iterator[Vol]:
    kind = request.param.partition("-")[0]
    if request.param == "zfs-diff":
        request.getfixturevalue("openzfs")  # `zfs diff` as OpenZFS has it, on zfs-fuse
    keys: dict[str, Any] = {"kind": kind, "settle_seconds": 0, "min_size": MIN_SIZE,
                            "mode": "apply"}
    dataset = None
    if kind in EXTENT_KINDS:
        root = request.getfixturevalue("loopfs")(kind, "512M")
        roots, view = (root,), root
    elif kind == "zfs":
        pool = request.getfixturevalue("zpool")("256M")
        dataset = pool.dataset("contract")
        subprocess.run(["zfs", "create", dataset], check=True, capture_output=True, timeout=120)
        roots = (pool.mountpoint / "contract",)
        view = roots[0]
    elif kind == "plain":
        roots = (request.getfixturevalue("tmpfs")("64m") / "vol",)
        roots[0].mkdir()
        view = roots[0]
    else:
        mp = request.getfixturevalue("mergerfs_pool")(2)
        roots, view = mp.branches, mp.root
        keys.update(pool_root=str(mp.root), branches=[str(b) for b in mp.branches])
    keys["path"] = str(view)
    yield Vol(kind, roots, view, config(tmp_path, {"v": keys}), tmp_path / "index.db", dataset,
              request.param == "zfs-diff")


def run_pass(v: Vol, *args: str) -> dict[str, Any]:
    """One pass through the CLI, in this process; its --json report of the volume."""
    rc, out = dedupd_here("run", "--once", "-c", str(v.cfg), "--json", *args)
    assert rc == 0, out
    (report,) = json.loads(out)["volumes"]
    assert isinstance(report, dict)
    return report


def dedupe_actions(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in report["actions"] if a["action"] != "recover"]


def groups_of(v: Vol, report: dict[str, Any]) -> set[frozenset[str]]:
    """The duplicate groups a report acts on, as sets of paths relative to the volume
    (whatever the engine: hardlink, cross-drive or extent actions)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a in dedupe_actions(report):
        if a["action"] == "dedupe":
            keep, others = a["reference"], a["paths"]
        else:
            keep, others = a["keep"], [a["replace"]]
        for o in others:
            parent[find(v.rel(o))] = find(v.rel(keep))
    out: dict[str, set[str]] = {}
    for x in parent:
        out.setdefault(find(x), set()).add(x)
    return {frozenset(g) for g in out.values()}


_FIEMAP = re.compile(rb"^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.\s*(\d+):")


def extents(p: Path) -> tuple[tuple[int, ...], ...]:
    """Physical extents of a file (filefrag: FIEMAP without our own code)."""
    out = subprocess.run(["filefrag", "-v", "-b4096", str(p)], check=True,
                         capture_output=True).stdout
    return tuple(tuple(int(x) for x in m.groups()) for ln in out.splitlines()
                 if (m := _FIEMAP.match(ln)))


def disk_state(v: Vol) -> dict[str, Any]:
    """Every name below the volume with its inode, link count, size, times, bytes (and
    physical extents on extent kinds); the dataset's snapshots on ZFS."""
    _sync(v.roots)
    out: dict[str, Any] = {}
    for i, root in enumerate(v.roots):
        for dirpath, dirs, files in os.walk(root):
            for name in dirs + files:
                p = Path(dirpath) / name
                st = os.lstat(p)
                row: tuple[Any, ...] = (st.st_ino, st.st_nlink, st.st_size, st.st_mode,
                                        st.st_mtime_ns, st.st_ctime_ns)
                if p.is_file() and not p.is_symlink():
                    row += (hashlib.sha256(p.read_bytes()).hexdigest(),)
                    if v.kind in EXTENT_KINDS:
                        row += (extents(p),)
                out[f"{i}:{p.relative_to(root)}"] = row
    if v.dataset is not None:
        out["snapshots"] = subprocess.run(
            ["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", v.dataset],
            check=True, capture_output=True, text=True, timeout=120).stdout
    return out


def test_dry_run_changes_nothing_and_finds_the_groups(vol: Vol) -> None:
    vol.build(TREE)
    before = disk_state(vol)
    report = run_pass(vol, "--dry-run")
    assert report["dry_run"] is True
    assert disk_state(vol) == before
    assert groups_of(vol, report) == GROUPS, report["actions"]
    assert report["counters"].get("groups") == len(GROUPS), report["counters"]


def test_unchanged_rescan_reads_no_bytes(vol: Vol) -> None:
    vol.build(TREE)
    first = run_pass(vol, "--dry-run")
    assert first["counters"].get("bytes_read", 0) > 0  # else the test below proves nothing
    again = run_pass(vol, "--dry-run")
    assert again["counters"].get("bytes_read", 0) == 0, again["counters"]
    applied = run_pass(vol)
    assert dedupe_actions(applied) and not applied["problems"], applied
    rescan = run_pass(vol)
    assert ("zfs_diff_entries" in rescan["counters"]) == vol.diff, rescan["counters"]
    assert rescan["counters"].get("bytes_read", 0) == 0, rescan["counters"]
    assert rescan["counters"].get("files_hashed", 0) == 0, rescan["counters"]
    assert dedupe_actions(rescan) == [], rescan["actions"]


def leftovers(v: Vol) -> list[Path]:
    """dedupd's temporary names (.dedupd-*) anywhere below the volume."""
    return [p for r in v.roots for p in r.rglob("*") if ".dedupd-" in p.name]


@pytest.mark.parametrize("k", [2, 4])
def test_kill_9_after_a_destructive_step_then_the_next_pass_recovers(vol: Vol, k: int) -> None:
    vol.build(TREE)
    view = content(manifest(vol.view))
    r = dedupd("run", "--once", "-c", str(vol.cfg), env={"DEDUPD_TEST_KILL_AT_STEP": str(k)},
               check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)  # it really died mid-pass
    after_kill = content(manifest(vol.view))
    # Every path keeps its bytes even before recovery (a hardlink op may have left
    # its temporary name next to it; the pool view hides the branches' temp names).
    assert {p: h for p, h in after_kill.items() if ".dedupd-" not in p} == view
    unfinished = journal_unfinished(vol.db) if vol.kind not in EXTENT_KINDS else []
    report = run_pass(vol)
    assert content(manifest(vol.view)) == view
    assert not leftovers(vol)
    if vol.kind not in EXTENT_KINDS:  # extent dedupe is atomic in the kernel: no journal
        assert journal_unfinished(vol.db) == []
        assert report["counters"].get("recovered", 0) == len(unfinished), report["counters"]
    check = run_pass(vol, "--dry-run")
    assert dedupe_actions(check) == [], check["actions"]  # the dedupe got finished


def counters_documented() -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", DOCS.read_text()))


def test_every_counter_a_pass_emits_is_documented(vol: Vol) -> None:
    vol.build(TREE)
    seen: set[str] = set()
    seen |= set(run_pass(vol, "--dry-run")["counters"])
    seen |= set(run_pass(vol)["counters"])
    (vol.roots[0] / "a/two.bin").unlink()
    vol.build([Spec("n/new copy.bin", blob(1, 64 * K))])
    seen |= set(run_pass(vol)["counters"])
    seen |= set(run_pass(vol)["counters"])
    missing = sorted(seen - counters_documented())
    assert not missing, f"counters missing from {DOCS}: {missing}"

