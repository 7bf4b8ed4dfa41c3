"""Hardlink dedupe: dedupd vs `jdupes -r -L` (the old scripts' approach), same data.

Builds one tree of files with duplicates (groups of 2-4, nested directories,
a few same-size different-content files). For each filesystem (ext4 on a loop
device and tmpfs, side by side in one run) and each round, copies it twice onto
a fresh mount, runs each tool on its own copy (alternating which goes first)
and records wall time, bytes freed (statvfs before/after) and the time of
unchanged re-runs. Every copy is checked afterwards: every path with its bytes.
Prints each timed run as it ends (in the order run: which tool went first shows),
then the median and range per filesystem, the load average, and the ratios.

Run as root (it mounts): python bench/bench_hardlink.py [--files N] [--fs ext4 tmpfs]
[--rounds N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import compile_dedupd


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


def umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=False)
    (where.parent / "ext4.img").unlink(missing_ok=True)


@dataclass
class Figures:
    wall: list[float] = field(default_factory=list)
    freed: list[int] = field(default_factory=list)
    rerun: list[float] = field(default_factory=list)


def argv_of(name: str, tree: Path, db: Path) -> list[str]:
    return {"dedupd": [sys.executable, "-m", "dedupd", "run", "--once", "--apply", "--settle",
                       "0", "--min-size", "1", "--db", f"sqlite:///{db}", str(tree)],
            "jdupes": ["jdupes", "-r", "-L", "-q", str(tree)]}[name]


def one_round(src: Path, kind: str, mnt: Path, size_mb: int, order: tuple[str, ...],
              reruns: int, out: dict[str, Figures]) -> None:
    """Both tools on fresh copies on a fresh mount; each copy keeps every path's bytes."""
    mount(kind, mnt, size_mb)
    try:
        trees = {}
        for name in order:
            trees[name] = mnt / name
            shutil.copytree(src, trees[name])
        before = manifest(src)
        os.sync()
        for name in order:
            argv = argv_of(name, trees[name], mnt.parent / f"index-{kind}.db")
            f0 = free(trees[name])
            out[name].wall.append(timed(argv))
            print(f"  {kind}: {name} {out[name].wall[-1]:.3f} s", flush=True)
            out[name].freed.append(free(trees[name]) - f0)
            out[name].rerun.extend(timed(argv) for _ in range(reruns))
        for name in order:
            assert manifest(trees[name]) == before, f"{name} changed file contents"
    finally:
        umount(mnt)
        for db in mnt.parent.glob(f"index-{kind}.db*"):
            db.unlink()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def span(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f} ({min(xs):.2f}-{max(xs):.2f})"


def report(kind: str, figs: dict[str, Figures], loads: list[str]) -> None:
    print(f"-- {kind}  (load before each round: {'; '.join(loads)})")
    print(f"{'tool':8} {'wall s, median (range)':>24} {'freed MiB':>10} "
          f"{'re-run s, median (range)':>26}")
    for name, f in figs.items():
        freed = sorted(set(f.freed))
        shown = "/".join(f"{x / 2**20:.1f}" for x in freed)
        print(f"{name:8} {span(f.wall):>24} {shown:>10} {span(f.rerun):>26}")
    d, j = figs["dedupd"], figs["jdupes"]
    ratio = statistics.median(d.wall) / statistics.median(j.wall)
    print(f"ratio dedupd/jdupes on {kind}: wall {ratio:.2f}x "
          f"(best of each {min(d.wall) / min(j.wall):.2f}x), bytes freed "
          f"{'equal' if set(d.freed) == set(j.freed) else 'DIFFERENT'}; dedupd re-run "
          f"median {statistics.median(d.rerun):.2f} s (target <= 0.2 s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--fs", nargs="+", choices=("ext4", "tmpfs"), default=["ext4", "tmpfs"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reruns", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("jdupes") is None:
        print("bench_hardlink: needs root and jdupes; skipped")
        return 0
    compile_dedupd()  # as installed: timed runs do not compile dedupd's modules
    base = Path(tempfile.mkdtemp(prefix="dedupd-bench-hl-"))
    mnt = base / "mnt"
    mnt.mkdir()
    try:
        src = base / "src"
        src.mkdir()
        ideal = build(src, args.files, 1)
        size_mb = 3 * sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) // 2**20 + 64
        print(f"{args.files} files, ideal bytes freed {ideal / 2**20:.1f} MiB, "
              f"{args.rounds} rounds per filesystem (tools alternate going first), "
              f"{args.reruns} unchanged re-runs each")
        for kind in args.fs:
            figs = {name: Figures() for name in ("dedupd", "jdupes")}
            loads = []
            for r in range(args.rounds):
                loads.append(load())
                order = ("dedupd", "jdupes") if r % 2 == 0 else ("jdupes", "dedupd")
                one_round(src, kind, mnt, size_mb, order, args.reruns, figs)
            report(kind, figs, loads)
        return 0
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
