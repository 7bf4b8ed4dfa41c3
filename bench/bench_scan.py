"""Duplicate-finding speed: `dedupd scan` vs `jdupes -r` vs `rmlint`, warm and cold cache.

Builds (once, then reuses) a tree of 20,000 files / ~2 GB with ~30% duplicates
under $DEDUPD_BENCH_DIR (default /var/tmp/dedupd-bench). Prints wall times,
the dedupd/rival ratios, bytes read, the unchanged-rescan ratio, and peak RSS;
then the peak RSS of a scan that indexes 1,000,000 files (tmpfs tree).
Run: make bench BENCH_ARGS=scan  (or .venv/bin/python bench/bench_scan.py)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DEDUPD, WORK, drop_caches, peak_rss_kb, warm

from tests.treegen import bulk_tree

FILES = int(os.environ.get("BENCH_FILES", "20000"))
BYTES = int(os.environ.get("BENCH_BYTES", str(2 * 1024**3)))
MILLION = int(os.environ.get("BENCH_MILLION", "1000000"))


def tree() -> Path:
    root = WORK / f"scan-{FILES}-{BYTES}"
    marker = root / ".complete"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"building {FILES} files / {BYTES / 1e9:.1f} GB under {root} ...", flush=True)
        bulk_tree(root / "t", FILES, BYTES, dup_ratio=0.3)
        marker.write_text("ok")
    return root / "t"


def dedupd_scan(root: Path, db: str) -> tuple[float, int, dict[str, object]]:
    secs, rss, out = peak_rss_kb([DEDUPD, "scan", "--json", "--no-progress", "--db", db,
                                  str(root)])
    return secs, rss, json.loads(out)


def run_rivals(root: Path, cold: bool) -> dict[str, float]:
    times: dict[str, float] = {}
    tmp = tempfile.mkdtemp(prefix="dedupd-bench-")
    try:
        for name, argv in (
            ("jdupes", ["jdupes", "-r", "-q", str(root)]),
            # rmlint replaces its output file by rename: never point it at /dev/null
            ("rmlint", ["rmlint", "-T", "df", "-o", f"fdupes:{tmp}/rmlint.out", str(root)]),
        ):
            if cold:
                drop_caches()
            secs, _, _ = peak_rss_kb([shutil.which(argv[0]) or argv[0], *argv[1:]])
            times[name] = secs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return times


def main() -> int:
    root = tree()
    results: dict[str, dict[str, float]] = {}
    stats: dict[str, object] = {}
    rss = 0
    rescan: dict[str, float] = {}
    for mode in ("warm", "cold"):
        if mode == "warm":
            warm(root)
        times = run_rivals(root, cold=mode == "cold")
        db = tempfile.mkdtemp(prefix="dedupd-bench-db-")
        try:
            if mode == "cold":
                drop_caches()
            secs, rss_m, doc = dedupd_scan(root, f"sqlite:///{db}/i.db")
            times["dedupd"] = secs
            if mode == "warm":
                stats, rss = doc["stats"], rss_m  # type: ignore[assignment]
            else:
                drop_caches()  # a nightly rescan: metadata not cached either
            rescan[mode], _, again = dedupd_scan(root, f"sqlite:///{db}/i.db")
            assert again["stats"]["bytes_read"] == 0  # type: ignore[index]
        finally:
            shutil.rmtree(db, ignore_errors=True)
        results[mode] = times
    print(f"tree: {FILES} files, {BYTES / 1e9:.2f} GB, {stats['groups']} groups, "
          f"{stats['duplicate_bytes'] / 1e9:.2f} GB duplicate")  # type: ignore[operator]
    print(f"{'cache':6} {'dedupd s':>9} {'jdupes s':>9} {'rmlint s':>9} "
          f"{'dedupd/jdupes':>14} {'dedupd/rmlint':>14}")
    for mode, t in results.items():
        print(f"{mode:6} {t['dedupd']:9.2f} {t['jdupes']:9.2f} {t['rmlint']:9.2f} "
              f"{t['dedupd'] / t['jdupes']:14.2f} {t['dedupd'] / t['rmlint']:14.2f}")
    print(f"dedupd bytes read (first scan): {stats['bytes_read']} "
          f"({stats['bytes_read'] / BYTES:.1%} of the tree), files read: "  # type: ignore[operator]
          f"{stats['files_hashed']}")
    for mode, t in results.items():
        print(f"unchanged rescan ({mode} cache): {rescan[mode]:.2f} s = "
              f"{rescan[mode] / t['dedupd']:.2f} of the {mode} first scan, 0 bytes read")
    print(f"dedupd peak RSS (first scan, {FILES} files): {rss / 1024:.1f} MB")
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
        secs, rss, out = peak_rss_kb([DEDUPD, "scan", "--json", "--no-progress", "--db",
                                      f"sqlite:///{mnt}/i.db", str(mnt / "t")])
        st = json.loads(out)["stats"]
        print(f"1M-file index: {st['files_seen']} files seen, {st['groups']} groups, "
              f"{secs:.1f} s, peak RSS {rss / 1024:.1f} MB")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


if __name__ == "__main__":
    sys.exit(main())
