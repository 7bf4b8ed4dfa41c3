"""`dedupd consolidate` under a tiny open-file limit (`ulimit -n` 8..20, soft = hard,
so execute._fd_budget cannot raise it): a clear error and exit 1, never a
traceback, and nothing half done: the next run with a normal limit imports
every file.

Before: a traceback ("unexpected error (this is a bug)") from wherever the
descriptors ran out first: opening the archive's handle, os.fwalk of a source,
the pipes that fork the index writer and the copy worker (execute.Helpers).
cli.main now says EMFILE wherever it surfaces as "too many open files: the limit
(ulimit -n) is N" (exit 1: a re-run meets the same limit; ENFILE is 75).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _consolidate(tmp: Path, limit: int | None) -> subprocess.CompletedProcess[str]:
    def few_fds() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "-c",
                           str(tmp / "c.toml"), "--db", f"sqlite:///{tmp / 'db'}", "p"],
                          capture_output=True, text=True, timeout=120, preexec_fn=few_fds)


@pytest.mark.parametrize("limit", [8, 10, 12, 14, 16, 20])
def test_consolidate_without_descriptors_is_a_clear_error(tmp_path: Path, limit: int) -> None:
    src, arch = tmp_path / "src", tmp_path / "arch"
    (src / "d").mkdir(parents=True)
    arch.mkdir()
    content = {f"d/f{i}": os.urandom(3000 + i) for i in range(6)}
    for name, data in content.items():
        (src / name).write_bytes(data)
    (tmp_path / "c.toml").write_text(
        f'[consolidate.p]\nsources = ["{src}"]\narchive = "{arch}"\n'
        'layout = "{name}"\n')
    r = _consolidate(tmp_path, limit)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "this is a bug" not in r.stderr, r.stderr
    assert r.stderr.startswith("dedupd: error: "), r.stderr
    assert "Too many open files" in r.stderr or f"(ulimit -n) is {limit}" in r.stderr

    again = _consolidate(tmp_path, None)
    assert again.returncode == 0, again.stderr
    got = {p.name: p.read_bytes() for p in arch.rglob("*")
           if p.is_file() and not p.name.startswith(".dedupd")}  # not its lock file
    assert sorted(got.values()) == sorted(content.values())
    assert {p.relative_to(src).as_posix(): p.read_bytes()
            for p in src.rglob("*") if p.is_file()} == content


@pytest.mark.parametrize("limit", [48, 64])
def test_consolidate_many_source_directories_under_a_low_limit(tmp_path: Path,
                                                               limit: int) -> None:
    """150 source directories under `ulimit -n` 48 or 64 (soft = hard): every file is
    imported at the first run. Before, the run kept up to 64 source directory handles
    whatever the limit (execute.Executor's SourceDirs: max(64, budget / 2)), so past
    the limit each further source failed "Too many open files" at every run."""
    src, arch = tmp_path / "src", tmp_path / "arch"
    content = {f"d{i}/f": os.urandom(3000 + i) for i in range(150)}
    for name, data in content.items():
        (src / name).parent.mkdir(parents=True)
        (src / name).write_bytes(data)
    arch.mkdir()
    (tmp_path / "c.toml").write_text(
        f'[consolidate.p]\nsources = ["{src}"]\narchive = "{arch}"\n'
        'layout = "{source}/{name}"\n')
    r = _consolidate(tmp_path, limit)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Too many open files" not in r.stderr
    got = [p.read_bytes() for p in arch.rglob("*")
           if p.is_file() and not p.name.startswith(".dedupd")]
    assert sorted(got) == sorted(content.values())


def test_consolidate_size_groups_of_many_files_under_1024(tmp_path: Path) -> None:
    """`ulimit -n 1024` (a common hard limit): three size groups of 250 distinct files
    each, dated a month apart (so a copy holds its own archive directory too). A size
    group goes to the copy worker in one batch, past the batch's file limit, and the
    worker holds two batches at once (copyloop.py): 2 x 250 x 3 handles. Before, 164
    of the 750 copies failed "Too many open files" (the session's start imported all)."""
    src, arch = tmp_path / "src", tmp_path / "arch"
    src.mkdir()
    arch.mkdir()
    content = {}
    for size in (5000, 5001, 5002):
        for i in range(250):
            p = src / f"f{size}-{i}"
            content[p.name] = os.urandom(size)
            p.write_bytes(content[p.name])
            t = 946_684_800 + i * 31 * 86_400
            os.utime(p, (t, t))
    (tmp_path / "c.toml").write_text(
        f'[consolidate.p]\nsources = ["{src}"]\narchive = "{arch}"\n')
    r = _consolidate(tmp_path, 1024)
    assert r.returncode == 0, r.stderr[-2000:]
    got = {p.name: p.read_bytes() for p in arch.rglob("*")
           if p.is_file() and not p.name.startswith(".dedupd")}
    assert got == content


def test_kill_at_every_step_when_a_size_group_is_split(tmp_path: Path) -> None:
    """`ulimit -n 40`: batches of three files. A size group of five distinct files
    after three others goes in two batches (execute._stage_group splits a group past
    the batch's limits; before, it went whole, past the worker's open files). A kill
    -9 after every step leaves no partial file under a real name and no index row
    naming a missing copy, and a run with the usual limit completes the import; one
    step past the last, the run completes (every step was a kill point)."""
    from dedupd.consolidate.execute import KILL_ENV
    from dedupd.index import provenance as prov
    from dedupd.index.store import Store

    src = tmp_path / "src"
    src.mkdir()
    content = {f"u{i}.bin": os.urandom(3000 + 100 * i) for i in range(3)}
    content.update({f"g{i}.bin": os.urandom(4000) for i in range(5)})
    for name, data in content.items():
        (src / name).write_bytes(data)
    steps = 8 * 5 + 3 + 3 + 1  # written..queued per copy, syncing + answered a batch, ended
    for k in range(1, steps + 2):
        arch = tmp_path / f"a{k}"
        arch.mkdir()
        db = tmp_path / f"db{k}"
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[database]\nurl = "sqlite:///{db}"\n[consolidate.p]\n'
                       f'sources = ["{src}"]\narchive = "{arch}"\nlayout = "{{name}}"\n')

        def limited(k: int = k) -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
            os.environ[KILL_ENV] = str(k)

        r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "-c", str(cfg),
                            "p"], capture_output=True, text=True, timeout=120,
                           preexec_fn=limited)
        got = {p.name: p.read_bytes() for p in arch.iterdir() if p.suffix == ".bin"}
        if k > steps:
            assert r.returncode == 0, r.stderr
            assert got == content
            continue
        assert r.returncode == -9, (k, r.returncode, r.stderr)
        assert all(content[n] == b for n, b in got.items()), k
        store = Store(f"sqlite:///{db}")
        try:
            for row in prov.load(store, "p").values():
                assert os.path.basename(row.archive_path).decode() in got, (k, row)
        finally:
            store.close()
        again = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "-c",
                                str(cfg), "p"], capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, (k, again.stderr)
        assert {p.name: p.read_bytes() for p in arch.iterdir() if p.suffix == ".bin"} == content
        store = Store(f"sqlite:///{db}")
        try:
            assert prov.count(store, "p") == len(content), k
        finally:
            store.close()


@pytest.mark.parametrize("limit", [32, 36])
def test_consolidate_a_month_a_file_under_a_very_low_limit(tmp_path: Path,
                                                           limit: int) -> None:
    """150 files a month apart (150 archive directories) under `ulimit -n` 32 or 36:
    every file imported. Before, the copy worker kept at least 8 archive directory
    handles between batches (copyloop's DirCache) whatever the limit: 35 copies
    failed "Too many open files" at 32, the worker itself at 36."""
    import_spread_out(tmp_path, [3000 + i for i in range(150)], limit)


def import_spread_out(tmp_path: Path, sizes: list[int], limit: int) -> None:
    """A file of each size in a directory of its own, each a month after the one
    before (an archive directory each), imported under `ulimit -n` limit: every one."""
    src, arch = tmp_path / "src", tmp_path / "arch"
    content = {}
    for i, size in enumerate(sizes):
        p = src / f"d{i}" / f"f{i}"
        p.parent.mkdir(parents=True)
        content[p.name] = os.urandom(size)
        p.write_bytes(content[p.name])
        t = 946_684_800 + i * 31 * 86_400
        os.utime(p, (t, t))
    arch.mkdir()
    (tmp_path / "c.toml").write_text(
        f'[consolidate.p]\nsources = ["{src}"]\narchive = "{arch}"\n')
    r = _consolidate(tmp_path, limit)
    assert r.returncode == 0, r.stderr[-2000:]
    got = {p.name: p.read_bytes() for p in arch.rglob("*")
           if p.is_file() and not p.name.startswith(".dedupd")}
    assert got == content


def test_consolidate_one_size_group_of_200_files_under_384(tmp_path: Path) -> None:
    """200 distinct files of one size (one unsorted size group) under `ulimit -n` 384:
    all imported. Before, a group went to the copy worker as one batch whatever the
    batch limits, and its 200 staged files and sources overran the worker's limit:
    "the copy worker failed: ... Too many open files" at every run."""
    src, arch = tmp_path / "src", tmp_path / "arch"
    src.mkdir()
    arch.mkdir()
    content = {f"f{i}": os.urandom(5000) for i in range(200)}
    for name, data in content.items():
        (src / name).write_bytes(data)
    (tmp_path / "c.toml").write_text(
        f'[consolidate.p]\nsources = ["{src}"]\narchive = "{arch}"\nlayout = "{{name}}"\n')
    r = _consolidate(tmp_path, 384)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in arch.iterdir()
            if not p.name.startswith(".dedupd")} == content
