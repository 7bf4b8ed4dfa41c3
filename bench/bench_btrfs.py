"""BTRFS extent dedupe: dedupd vs duperemove vs jdupes on the same fresh image.

One dataset (photo-sized incompressible files, a share of them copied into
backup folders with cp --reflink=never) is written once into a BTRFS image;
each contender gets its own byte-identical copy of that image, a cold page
cache, and is timed until it exits. Space reclaimed is measured with
`btrfs filesystem du` (exclusive + shared data bytes) before and after.

dedupd's bytecode is compiled first (as an installed package has it), so no
run pays for compiling its sources (PYTHONDONTWRITEBYTECODE would otherwise
make every run compile them again).

Run: .venv/bin/python bench/bench_btrfs.py [--files N] [--dup-ratio R]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import compile_dedupd

MiB = 1024 * 1024


def sh(*argv: str, capture: bool = True) -> str:
    return subprocess.run(list(argv), check=True, text=True, capture_output=capture).stdout


def make_dataset(mnt: Path, files: int, dup_ratio: float, seed: int = 1) -> int:
    """Originals of 0.5-4 MiB plus fresh copies of a share of them; returns duplicate bytes."""
    rnd = random.Random(seed)
    lib = mnt / "Pictures"
    lib.mkdir()
    originals = []
    for k in range(files):
        size = rnd.randrange(MiB // 2, 4 * MiB)
        d = lib / f"{2010 + k % 14}"
        d.mkdir(exist_ok=True)
        p = d / f"IMG_{k:05d}.jpg"
        p.write_bytes(rnd.randbytes(size))
        originals.append(p)
    dup = 0
    backup = mnt / "Backup"
    for p in rnd.sample(originals, int(files * dup_ratio)):
        for copy in range(rnd.choice([1, 1, 2])):
            target = backup / f"disk{copy}" / p.parent.name / p.name
            target.parent.mkdir(parents=True, exist_ok=True)
            sh("cp", "--reflink=never", str(p), str(target))
            dup += p.stat().st_size
    return dup


def data_bytes(mnt: Path) -> int:
    sh("btrfs", "filesystem", "sync", str(mnt))
    line = sh("btrfs", "filesystem", "du", "-s", "--raw", str(mnt)).splitlines()[-1]
    _t, excl, shared = (int(x) for x in line.split()[:3])
    return excl + shared


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def contenders(work: Path) -> dict[str, Callable[[Path], list[str]]]:
    py = sys.executable

    def dedupd(backend: str) -> Callable[[Path], list[str]]:
        def argv(mnt: Path) -> list[str]:
            cfg = work / f"dedupd-{backend}.toml"
            # Same CPU and I/O priority as the rivals (dedupd defaults to nice 19, idle I/O).
            cfg.write_text('[daemon]\nnice = 0\nionice = "none"\n'
                           f'[volumes.bench]\nkind = "btrfs"\npath = "{mnt}"\n'
                           f'settle_seconds = 0\ndedup_backend = "{backend}"\n')
            db = work / f"dedupd-{backend}.db"
            db.unlink(missing_ok=True)
            return [py, "-m", "dedupd", "run", "--once", "-c", str(cfg), "--db",
                    f"sqlite:///{db}", "bench"]
        return argv

    return {
        "dedupd run --once (ioctl)": dedupd("ioctl"),
        "dedupd run --once (duperemove backend)": dedupd("duperemove"),
        "duperemove -dr": lambda mnt: ["duperemove", "-dr", "-q", str(mnt)],
        "jdupes -rB": lambda mnt: ["jdupes", "-rBq", str(mnt)],
    }


def startup(work: Path) -> float:
    """Cold-cache wall time of `dedupd run --once` on an empty BTRFS filesystem with a
    new index: starting Python, importing, creating the index, exiting."""
    img, mnt = work / "empty.img", work / "mnt"
    sh("truncate", "-s", "256M", str(img))
    sh("mkfs.btrfs", "-q", "-f", str(img))
    sh("mount", "-o", "loop", str(img), str(mnt))
    cfg = work / "empty.toml"
    cfg.write_text('[daemon]\nnice = 0\nionice = "none"\n')
    db = work / "empty.db"
    best = float("inf")
    try:
        for _ in range(3):
            db.unlink(missing_ok=True)
            drop_caches()
            t0 = time.monotonic()
            sh(sys.executable, "-m", "dedupd", "run", "--once", "-c", str(cfg),
               "--db", f"sqlite:///{db}", str(mnt))
            best = min(best, time.monotonic() - t0)
    finally:
        sh("umount", str(mnt))
        img.unlink()
    return best


def run_one(name: str, argv: Callable[[Path], list[str]], master: Path,
            work: Path) -> tuple[float, int]:
    img = work / "run.img"
    mnt = work / "mnt"
    sh("cp", "--sparse=always", str(master), str(img))
    sh("mount", "-o", "loop", str(img), str(mnt))
    try:
        before = data_bytes(mnt)
        drop_caches()
        t0 = time.monotonic()
        r = subprocess.run(argv(mnt), capture_output=True, text=True)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            print(f"  {name}: exit {r.returncode}: {r.stderr.strip()[-300:]}", file=sys.stderr)
        return wall, before - data_bytes(mnt)
    finally:
        sh("umount", str(mnt))
        img.unlink()


def small_files(mnt: Path, n: int) -> list[Path]:
    """n files of 8-16 KiB in 100 directories, every 500th with a fresh twin."""
    rnd = random.Random(5)
    blob = rnd.randbytes(16 * 1024 + n)
    files = []
    for k in range(n):
        d = mnt / f"d{k % 100:02d}"
        d.mkdir(exist_ok=True)
        p = d / f"f{k:05d}.jpg"
        size = 8192 + rnd.randrange(8192)
        p.write_bytes(k.to_bytes(8, "little") + blob[k:k + size - 8])
        files.append(p)
    for k in range(0, n, 500):
        (files[k].parent / f"twin{k}.jpg").write_bytes(files[k].read_bytes())
    return files


def incremental(work: Path, n: int) -> None:
    """Full pass vs the pass after touching 100 files, both as `dedupd run --once`."""
    img, mnt = work / "inc.img", work / "mnt"
    sh("truncate", "-s", "3G", str(img))
    sh("mkfs.btrfs", "-q", "-f", str(img))
    sh("mount", "-o", "loop", str(img), str(mnt))
    try:
        files = small_files(mnt, n)
        cfg = work / "inc.toml"
        cfg.write_text('[daemon]\nnice = 0\nionice = "none"\n'
                       f'[volumes.inc]\nkind = "btrfs"\npath = "{mnt}"\nsettle_seconds = 0\n')
        argv = [sys.executable, "-m", "dedupd", "run", "--once", "--json", "-c", str(cfg),
                "--db", f"sqlite:///{work}/inc.db", "inc"]

        def timed() -> tuple[float, int]:
            drop_caches()
            t0 = time.monotonic()
            out = sh(*argv)
            doc = json.loads(out)["volumes"][0]
            return time.monotonic() - t0, int(doc["counters"].get("files_examined", 0))

        full, seen = timed()
        timed()  # absorbs the inodes the first pass's dedupes rewrote
        for p in random.Random(2).sample(files, 100):
            os.utime(p)
        inc, examined = timed()
        print(f"incremental: {n} files; full pass {full:.2f}s ({seen} examined); after "
              f"touching 100: {inc:.2f}s ({examined} examined) = {100 * inc / full:.1f}% "
              "(wall time of the whole command, Python start included)")
    finally:
        sh("umount", str(mnt))
        img.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=300, help="original photos (default 300)")
    ap.add_argument("--dup-ratio", type=float, default=0.4, help="share copied (default 0.4)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per contender (best is kept)")
    ap.add_argument("--small-files", type=int, default=50_000,
                    help="files of the incremental measurement (0 skips it)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_btrfs needs root (loop mounts)", file=sys.stderr)
        return 1
    missing = [t for t in ("mkfs.btrfs", "duperemove", "jdupes") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (make deps)", file=sys.stderr)
        return 1
    compile_dedupd()
    work = Path(tempfile.mkdtemp(prefix="dedupd-bench-"))
    master, mnt = work / "master.img", work / "mnt"
    mnt.mkdir()
    try:
        sh("truncate", "-s", "4G", str(master))
        sh("mkfs.btrfs", "-q", "-f", str(master))
        sh("mount", "-o", "loop", str(master), str(mnt))
        try:
            dup = make_dataset(mnt, args.files, args.dup_ratio)
            total = data_bytes(mnt)
        finally:
            sh("umount", str(mnt))
        print(f"dataset: {total / MiB:.0f} MiB of file data, {dup / MiB:.0f} MiB duplicate "
              f"({args.files} originals, dup ratio {args.dup_ratio})")
        print(f"{'tool':42} {'wall s':>8} {'reclaimed MiB':>14} {'of dup':>7} "
              f"{'vs duperemove':>14}")
        results: dict[str, tuple[float, int]] = {}
        for _ in range(args.rounds):  # rounds interleaved so load spikes hit everyone
            for name, argv in contenders(work).items():
                got = run_one(name, argv, master, work)
                results[name] = min(results.get(name, got), got)
        base = results["duperemove -dr"][0]
        for name, (wall, rec) in results.items():
            print(f"{name:42} {wall:8.2f} {rec / MiB:14.1f} {100 * rec / dup:6.1f}% "
                  f"{wall / base:13.2f}x")
        print(f"(of dedupd's wall time, {startup(work):.2f}s is the fixed cost of a cold start: "
              "`dedupd run --once` on an empty BTRFS filesystem, best of 3)")
        if args.small_files:
            incremental(work, args.small_files)
        return 0
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
