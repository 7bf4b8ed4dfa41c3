"""mergerfs pool dedupe: dedupd (kind "pool") vs `jdupes -r -L` on the pool mount.

The same tree is spread over two tmpfs branches (by a hash of each path) under
a real mergerfs mount; each tool gets a fresh pool. jdupes works through the
mount (mergerfs makes a cross-branch link on the source's branch, cloning the
parent directories); dedupd works on the branches directly with its journalled
link-then-delete. Prints wall time and bytes freed (sum over branches,
statvfs) and checks the pool view (every path, same bytes) afterwards.

Run as root: python bench/bench_pool.py [--files N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_hardlink import build, free, manifest


def spread(src: Path, branches: list[Path]) -> None:
    for p in src.rglob("*"):
        if p.is_file():
            rel = p.relative_to(src)
            b = branches[hashlib.sha256(str(rel).encode()).digest()[0] % len(branches)]
            (b / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, b / rel)


def pool(base: Path, name: str, size_mb: int) -> tuple[Path, list[Path]]:
    branches = []
    for i in range(2):
        b = base / f"{name}-b{i}"
        b.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "bench", str(b)],
                       check=True)
        branches.append(b)
    root = base / f"{name}-pool"
    root.mkdir()
    subprocess.run(["mergerfs", "-o", "cache.files=off,category.create=mfs",
                    ":".join(map(str, branches)), str(root)], check=True)
    return root, branches


def run(name: str, root: Path, branches: list[Path], base: Path) -> tuple[float, int]:
    if name == "dedupd":
        cfg = base / "pool.toml"
        cfg.write_text(f'[database]\nurl = "sqlite:///{base}/index.db"\n[volumes.p]\n'
                       f'kind = "pool"\npath = "{root}"\npool_root = "{root}"\n'
                       f'branches = ["{branches[0]}", "{branches[1]}"]\nsettle_seconds = 0\n'
                       'min_size = 1\nmode = "apply"\n')
        argv = [sys.executable, "-m", "dedupd", "run", "--once", "-c", str(cfg)]
    else:
        argv = ["jdupes", "-r", "-L", "-q", str(root)]
    f0 = sum(free(b) for b in branches)
    t0 = time.monotonic()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    t = time.monotonic() - t0
    return t, sum(free(b) for b in branches) - f0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1500)
    args = ap.parse_args()
    if os.geteuid() != 0 or not (shutil.which("jdupes") and shutil.which("mergerfs")):
        print("bench_pool: needs root, jdupes and mergerfs; skipped")
        return 0
    base = Path(tempfile.mkdtemp(prefix="dedupd-bench-pool-"))
    mounts: list[Path] = []
    try:
        src = base / "src"
        src.mkdir()
        ideal = build(src, args.files, 2)
        size_mb = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) // 2**20 + 64
        results = {}
        for name in ("dedupd", "jdupes"):
            root, branches = pool(base, name, size_mb)
            mounts += [root, *branches]
            spread(src, branches)
            view = manifest(root)
            results[name] = run(name, root, branches, base)
            assert manifest(root) == view, f"{name} changed the pool view"
        print(f"{args.files} files on a 2-branch mergerfs pool, ideal bytes freed "
              f"{ideal / 2**20:.1f} MiB")
        print(f"{'tool':8} {'wall s':>8} {'freed MiB':>10}")
        for name, (t, fr) in results.items():
            print(f"{name:8} {t:8.2f} {fr / 2**20:10.1f}")
        d, j = results["dedupd"], results["jdupes"]
        print(f"ratio dedupd/jdupes: wall {d[0] / j[0]:.2f}x, freed {d[1] / max(j[1], 1):.2f}x")
        return 0
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", str(m)], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
