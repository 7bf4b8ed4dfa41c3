"""Duplicate-finding speed: `dedupd scan` vs `jdupes -r` vs `rmlint`, warm and cold cache.

Builds (once, then reuses) a tree of 20,000 files / ~2 GB with ~30% duplicates
and a tree of real files (this machine's documentation and Python library
trees, copied) under $DEDUPD_BENCH_DIR (default /var/tmp/dedupd-bench). For
each (BENCH_TREES="bulk" or "real" for one) it prints wall times (best of
BENCH_ROUNDS=3 interleaved rounds, each tool once a round, with their range), the
dedupd/rival ratios, bytes read, the unchanged-rescan ratios (warm against the
warm first scan, cold against the cold one), and peak RSS; then the peak RSS of
a scan that indexes 1,000,000 files (tmpfs tree; BENCH_MILLION=0 skips it).
Settings: BENCH_FILES, BENCH_BYTES, BENCH_ROUNDS, BENCH_TREES, BENCH_MILLION (environment).
Run: make bench BENCH_ARGS=scan  (or .venv/bin/python bench/bench_scan.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    DEDUPD,
    WORK,
    compile_dedupd,
    drop_caches,
    peak_rss_kb,
    tree_peak_rss_kb,
    warm,
)

from tests.treegen import bulk_tree

FILES = int(os.environ.get("BENCH_FILES", "20000"))
BYTES = int(os.environ.get("BENCH_BYTES", str(2 * 1024**3)))
MILLION = int(os.environ.get("BENCH_MILLION", "1000000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
BENCH_TREES = os.environ.get("BENCH_TREES", "").split()  # e.g. "real": only that tree
# "documentation and Python library trees present on the machine"
REAL_SOURCES = ["/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/lib/python3",
                f"/usr/lib/python3.{sys.version_info.minor}",
                f"{sys.prefix}/lib/python3.{sys.version_info.minor}/site-packages"]


def tree() -> Path:
    root = WORK / f"scan-{FILES}-{BYTES}"
    marker = root / ".complete"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"building {FILES} files / {BYTES / 1e9:.1f} GB under {root} ...", flush=True)
        bulk_tree(root / "t", FILES, BYTES, dup_ratio=0.3)
        marker.write_text("ok")
    return root / "t"


def dedupd_scan(root: Path, db: str) -> tuple[float, int, dict[str, Any]]:
    secs, rss, out = peak_rss_kb([DEDUPD, "scan", "--json", "--no-progress", "--db", db,
                                  str(root)])
    return secs, rss, json.loads(out)


def rival_argvs(tmp: str, root: Path) -> dict[str, list[str]]:
    return {
        "jdupes": [shutil.which("jdupes") or "jdupes", "-r", "-q", str(root)],
        # rmlint replaces its output file by rename: never point it at /dev/null
        "rmlint": [shutil.which("rmlint") or "rmlint", "-T", "df", "-o",
                   f"fdupes:{tmp}/rmlint.out", str(root)],
    }


def one_round(root: Path, cold: bool, tmp: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Each tool once (the cache dropped before each run when cold), then an
    unchanged rescan by dedupd on the index its first scan made."""
    times: dict[str, float] = {}
    for name, argv in rival_argvs(tmp, root).items():
        if cold:
            drop_caches()
        times[name] = peak_rss_kb(argv)[0]
    db = tempfile.mkdtemp(prefix="dedupd-bench-db-")
    try:
        if cold:
            drop_caches()
        times["dedupd"], rss, doc = dedupd_scan(root, f"sqlite:///{db}/i.db")
        if cold:
            drop_caches()  # a nightly rescan: metadata not cached either
        times["rescan"], _, again = dedupd_scan(root, f"sqlite:///{db}/i.db")
        assert again["stats"]["bytes_read"] == 0
        size = index_bytes(f"{db}/i.db")
    finally:
        shutil.rmtree(db, ignore_errors=True)
    return times, {"stats": doc["stats"], "rss": rss, "index_bytes": size}


def index_bytes(path: str) -> int:
    """The SQLite index's size once its WAL is checkpointed into it (issue #13)."""
    import sqlite3

    with sqlite3.connect(path) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(path)


def real_tree() -> Path:
    """A tree of real files: this machine's documentation and Python library trees,
    copied once (symlinks dropped, so every tool sees the same regular files)."""
    root = WORK / "real"
    marker = root / ".complete"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        (root / "t").mkdir(parents=True)
        for n, src in enumerate(s for s in REAL_SOURCES if os.path.isdir(s)):
            print(f"copying {src} ...", flush=True)
            subprocess.run(["cp", "-a", "--reflink=never", src, str(root / "t" / f"{n}")],
                           check=True)
        subprocess.run(["find", str(root / "t"), "-type", "l", "-delete"], check=True)
        marker.write_text("ok")
    return root / "t"


def tree_bytes(root: Path) -> int:
    return sum(e.stat().st_size for e in _files(root))


def _files(root: Path) -> Any:
    for d, _, names in os.walk(root):
        for n in names:
            yield Path(d) / n


def jdupes_groups(root: Path) -> tuple[int, int]:
    """(groups, files in them) as jdupes -r finds them: the oracle for dedupd's answer."""
    out = subprocess.run(["jdupes", "-r", "-q", str(root)], capture_output=True,
                         check=True).stdout
    groups = [g for g in out.split(b"\n\n") if g.strip()]
    return len(groups), sum(len(g.strip().split(b"\n")) for g in groups)


def bench_tree(label: str, root: Path, nbytes: int, tmp: str) -> None:
    """Warm and cold, ROUNDS interleaved rounds each; print best, range and ratios."""
    runs: dict[str, dict[str, list[float]]] = {}
    first: dict[str, Any] = {}
    load0 = _load()
    for mode in ("warm", "cold"):
        if mode == "warm":
            warm(root)
        runs[mode] = {}
        for _ in range(ROUNDS):  # interleaved rounds: load spikes hit every tool alike
            times, info = one_round(root, mode == "cold", tmp)
            for k, v in times.items():
                runs[mode].setdefault(k, []).append(v)
            first = first or info
    stats, rss = first["stats"], first["rss"]
    jg, jf = jdupes_groups(root)
    same = (jg, jf) == (stats["groups"], stats["groups"] + stats["duplicate_files"])
    print(f"--- {label}: {stats['files_seen']} files, {nbytes / 1e9:.2f} GB, "
          f"{stats['groups']} groups, {stats['duplicate_bytes'] / 1e9:.2f} GB duplicate; "
          f"jdupes: {jg} groups of {jf} files ({'same' if same else 'DIFFERENT'})")
    print(f"best of {ROUNDS} interleaved rounds [range]; load average before/after: "
          f"{load0} / {_load()}")
    print(f"{'cache':6} {'dedupd s':>18} {'jdupes s':>18} {'rmlint s':>18} "
          f"{'dedupd/jdupes':>14} {'dedupd/rmlint':>14}")
    for mode, t in runs.items():
        b = {k: min(v) for k, v in t.items()}
        cols = " ".join(f"{b[k]:6.2f} [{min(t[k]):.2f}-{max(t[k]):.2f}]"
                        for k in ("dedupd", "jdupes", "rmlint"))
        print(f"{mode:6} {cols} {b['dedupd'] / b['jdupes']:14.2f} "
              f"{b['dedupd'] / b['rmlint']:14.2f}")
    print(f"dedupd bytes read (first scan): {stats['bytes_read']} "
          f"({stats['bytes_read'] / max(nbytes, 1):.1%} of the tree), files read: "
          f"{stats['files_hashed']}")
    for mode, t in runs.items():
        r, d = min(t["rescan"]), min(t["dedupd"])
        print(f"unchanged rescan ({mode} cache): {r:.2f} s = {r / d:.2f} of the {mode} "
              f"first scan, 0 bytes read")
    files = max(stats["files_seen"], 1)
    print(f"index: {first['index_bytes'] / files:.0f} bytes per file "
          f"({first['index_bytes']} bytes of SQLite for {files} files; target <= 100)")
    print(f"dedupd peak RSS (first scan, largest process): {rss / 1024:.1f} MB", flush=True)


def _load() -> str:
    """The 1-, 5- and 15-minute load averages (as `uptime` prints them): the machine is
    shared, so figures come with the load they were measured under."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    # Its settings are environment variables (above); --help shows them, and any
    # argument it does not know stops it before a minutes-long run starts.
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    trees = [("bulk", tree(), BYTES), ("real files", real_tree(), 0)]
    compile_dedupd()
    tmp = tempfile.mkdtemp(prefix="dedupd-bench-")
    try:
        for label, root, nbytes in trees:
            if BENCH_TREES and label.split()[0] not in BENCH_TREES:
                continue
            bench_tree(label, root, nbytes or tree_bytes(root), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if MILLION:
        million()
    return 0


def million() -> None:
    """Peak RSS while indexing MILLION small distinct files on a tmpfs (9..2056 bytes).

    Every file starts with its own number, so sizes are shared (about 490 files
    a size: all of them are hashed) but contents are not: the index, not a
    million-entry report, is what is measured.
    """
    mnt = Path(tempfile.mkdtemp(prefix="dedupd-million-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10g,nr_inodes=2000000", "tmpfs",
                    str(mnt)], check=True)
    try:
        rnd = os.urandom(4096)
        for d in range(MILLION // 1000):
            sub = mnt / "t" / f"{d:04d}"
            sub.mkdir(parents=True)
            for k in range(1000):
                i = d * 1000 + k
                n = i * 2654435761 % 2048 + 1
                with open(sub / f"{k}", "wb") as f:
                    f.write(i.to_bytes(8, "little") + rnd[k % 2048 : k % 2048 + n])
        secs, rss, total, out = tree_peak_rss_kb(
            [DEDUPD, "scan", "--json", "--no-progress", "--db", f"sqlite:///{mnt}/i.db",
             str(mnt / "t")])
        st = json.loads(out)["stats"]
        print(f"1M-file index: {st['files_seen']} files seen, {st['groups']} groups, "
              f"{secs:.1f} s, peak RSS {rss / 1024:.1f} MB (largest process; "
              f"{total / 1024:.1f} MB summed over dedupd's processes, sampled); "
              f"load average {_load()}")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


if __name__ == "__main__":
    sys.exit(main())
