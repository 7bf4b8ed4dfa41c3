"""Hardlink dedupe: dedupd vs `jdupes -r -L` (the old scripts' approach), same data.

Builds one tree of files with duplicates (groups of 2-4, nested directories,
a few same-size different-content files), copies it twice onto one fresh
tmpfs (or ext4 loop mount with --fs ext4), runs each tool on its own copy, and
prints wall time, bytes freed (statvfs before/after) and the time of a second,
no-op run. Both copies are checked afterwards: every path with its bytes.

Run as root (it mounts): python bench/bench_hardlink.py [--files N] [--fs ext4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, n: int, seed: int) -> int:
    """n files, ~40% duplicates; returns the bytes a perfect dedupe frees."""
    rng = random.Random(seed)
    uniq = max(1, int(n * 0.6))
    sizes = [rng.choice([16, 64, 256, 1024, 2048]) * 1024 + rng.randrange(4096)
             for _ in range(uniq)]
    written, dup_bytes = 0, 0
    for i in range(uniq):
        data = rng.randbytes(sizes[i])
        copies = 1 if rng.random() < 0.7 else rng.choice([2, 3, 4])
        for c in range(copies):
            if written >= n:
                break
            p = root / f"d{rng.randrange(20)}" / f"s{rng.randrange(10)}" / f"f{i}-{c}.bin"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            written += 1
            dup_bytes += len(data) if c else 0
    return dup_bytes


def manifest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def free(p: Path) -> int:
    os.sync()
    st = os.statvfs(p)
    return st.f_bfree * st.f_frsize


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - t0


def mount(kind: str, where: Path, size_mb: int) -> None:
    if kind == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "bench", str(where)],
                       check=True)
        return
    img = where.parent / "ext4.img"
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(where)], check=True)


def run_tool(name: str, tree: Path, db: Path) -> tuple[float, int, float]:
    argv = {"dedupd": [sys.executable, "-m", "dedupd", "run", "--once", "--apply", "--settle",
                       "0", "--min-size", "1", "--db", f"sqlite:///{db}", str(tree)],
            "jdupes": ["jdupes", "-r", "-L", "-q", str(tree)]}[name]
    f0 = free(tree)
    t = timed(argv)
    freed = free(tree) - f0
    return t, freed, timed(argv)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--fs", choices=("tmpfs", "ext4"), default="tmpfs")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("jdupes") is None:
        print("bench_hardlink: needs root and jdupes; skipped")
        return 0
    base = Path(tempfile.mkdtemp(prefix="dedupd-bench-hl-"))
    mnt = base / "mnt"
    mnt.mkdir()
    try:
        src = base / "src"
        src.mkdir()
        ideal = build(src, args.files, 1)
        size_mb = 3 * sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) // 2**20 + 64
        mount(args.fs, mnt, size_mb)
        results = {}
        for name in ("dedupd", "jdupes"):
            tree = mnt / name
            shutil.copytree(src, tree)
            before = manifest(tree)
            results[name] = run_tool(name, tree, base / "index.db")
            assert manifest(tree) == before, f"{name} changed file contents"
        print(f"{args.files} files on {args.fs}, ideal bytes freed {ideal / 2**20:.1f} MiB")
        print(f"{'tool':8} {'wall s':>8} {'freed MiB':>10} {'rerun s':>8}")
        for name, (t, freed, rerun) in results.items():
            print(f"{name:8} {t:8.2f} {freed / 2**20:10.1f} {rerun:8.2f}")
        d, j = results["dedupd"], results["jdupes"]
        print(f"ratio dedupd/jdupes: wall {d[0] / j[0]:.2f}x, freed "
              f"{d[1] / max(j[1], 1):.2f}x, rerun {d[2] / j[2]:.2f}x")
        return 0
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
