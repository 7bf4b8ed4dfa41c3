"""Bench: `dedupd consolidate` first import vs `rsync -a` of the same sources, side by side.

Two source sets, each three shares imported into an empty archive:

- generated: 20,000 files in three shares that overlap the way old backups do
  (about half of each share also exists in another one, same bytes, other
  names and mtimes; some real Pillow JPEGs with EXIF dates in all three);
- real: files copied from this machine (/usr/share/doc, the Debian Python
  packages and the Python standard library: ~23,000 small files as they are).

Each round times, in turn, dedupd's first import (fresh archive and index),
`rsync -a` of the same shares into an empty directory (no dedupe), and
`rsync -a` followed by `sync -f` (dedupd's copies are durable when it exits,
rsync's are not). Rounds are interleaved (dedupd, rsync, dedupd, rsync...)
so a machine shared with other work loads every tool alike; the table shows
best-of-N and the range of wall times, and the CPU time (user + sys) of each
tool; the summary adds the median of the rounds' ratios (each round's dedupd
against the same round's rsync). Before every timed command --warm-mib of memory
is written and freed (on a VM that reports free memory to its host --
virtio-balloon free page reporting, this one -- each page a command takes that
was reported faults on the host: 0.3-0.6 s of a 2.2 s import, measured, more for
the tool that takes more memory; a machine of its own has no such cost), then the
sources are read once (warm cache for each). After the rounds, a dedupd re-run
with nothing new must read nothing.

Usage: python bench/bench_consolidate.py [--trees generated,real] [--rounds N]
[--files N] [--keep] [--baseline CHECKOUT] [--warm-mib N]

--baseline times another dedupd checkout's first import in each round too
(e.g. `git worktree add /tmp/old <commit>`): old and new side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import mmap
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

from common import compile_dedupd, warm
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def jpeg(rng: random.Random, taken: str) -> bytes:
    im = Image.new("RGB", (24, 24), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    ex = Image.Exif()
    ex.get_ifd(0x8769)[0x9003] = taken
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=ex.tobytes())
    return buf.getvalue()


def make_contents(rng: random.Random, n: int) -> list[bytes]:
    """n distinct contents: 5% JPEGs with EXIF dates, the rest random 1-48 KiB blobs."""
    out = []
    for i in range(n):
        if i % 20 == 0:
            y, m, d = 2005 + i % 19, 1 + i % 12, 1 + i % 28
            out.append(jpeg(rng, f"{y}:{m:02d}:{d:02d} 12:00:00") + i.to_bytes(4, "big"))
        else:
            out.append(rng.randbytes(rng.randint(1024, 48 * 1024)))
    return out


def make_shares(base: Path, n_files: int, seed: int = 7) -> list[Path]:
    """Three shares holding n_files in all; ~55% of the files are distinct contents."""
    rng = random.Random(seed)
    contents = make_contents(rng, int(n_files * 0.55))
    shares = [base / f"share{i}" for i in range(3)]
    per = [n_files * 4 // 10, n_files * 35 // 100]
    per.append(n_files - sum(per))
    k = 0
    for si, share in enumerate(shares):
        for j in range(per[si]):
            # the first share holds contents in order; later shares mostly re-use them
            idx = k % len(contents) if si == 0 or j % 3 else rng.randrange(len(contents))
            k += 1
            d = share / f"dir{j % 97:02d}" / f"sub{j % 7}"
            d.mkdir(parents=True, exist_ok=True)
            name = f"IMG_{idx:05d}.JPG" if idx % 20 == 0 else f"file{si}_{j:05d}.dat"
            p = d / name
            p.write_bytes(contents[idx])
            t = 1.2e9 + rng.randrange(5 * 365 * 86400)
            os.utime(p, (t, t))
    return shares


def tree_bytes(roots: list[Path]) -> tuple[int, int]:
    files = size = 0
    for r in roots:
        for d, _dirs, names in os.walk(r):
            for n in names:
                st = os.lstat(os.path.join(d, n))
                files += 1
                size += st.st_size
    return files, size


REAL_TREES = (("/usr/share/doc", ()), ("/usr/lib/python3/dist-packages", ()),
              (f"{sys.base_prefix}/lib/python{sys.version_info[0]}.{sys.version_info[1]}",
               ("/site-packages",)))


def make_real_shares(base: Path) -> list[Path]:
    """Three shares copied from this machine's own trees (as they are, symlinks too)."""
    shares = []
    for i, (src, excl) in enumerate(REAL_TREES):
        if not os.path.isdir(src):
            continue
        dest = base / f"share{i}"
        dest.mkdir(parents=True)
        subprocess.run(["rsync", "-a", *[f"--exclude={x}" for x in excl], src + "/",
                        str(dest) + "/"], check=True, timeout=3600)
        shares.append(dest)
    if not shares:
        sys.exit("none of the real trees exists here")
    return shares


@dataclass
class Runs:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def best(self) -> float:
        return min(self.wall)

    def paired(self, other: Runs) -> str:
        """The median of the rounds' ratios to other's run in the same round (a round's
        commands meet the same state of the machine; best-of pairs runs rounds apart)."""
        ratios = [a / b for a, b in zip(self.wall, other.wall, strict=True)]
        return f"median of the rounds' ratios {statistics.median(ratios):.2f}x"

    def cells(self) -> str:
        return (f"{self.best():8.2f} {min(self.wall):6.2f}-{max(self.wall):<6.2f} "
                f"{min(self.cpu):8.2f}")


def timed(argv: list[str], cwd: Path | None = None) -> tuple[float, float, bytes]:
    """Run to completion: wall seconds, CPU seconds (user + sys of it and its children)."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    out = p.stdout.read() if p.stdout else b""
    err = p.stderr.read() if p.stderr else b""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"{argv[0]} failed ({p.returncode}): {err.decode()[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, out


WARM_MIB = 4096  # memory written and freed before each timed command (--warm-mib)


def warm_up(roots: list[Path], warm_mib: int) -> None:
    """Write warm_mib of memory then free it, and read every source file once, so each
    timed command starts with a warm cache (module docstring). In that order: memory
    taken after the read pushes sources out of a full cache (kept archives filling
    it, a 2 s import was seen waiting 0.2 s on sources read from the disk)."""
    warm_mib = min(warm_mib, _available_mib() // 2)  # never a squeeze of the machine
    if warm_mib > 0:
        with mmap.mmap(-1, warm_mib << 20) as m:
            block = b"\1" * (1 << 20)
            for off in range(0, warm_mib << 20, 1 << 20):
                m[off:off + (1 << 20)] = block
    warm(*roots)


def _available_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) >> 10
    return 0


def fresh(p: Path) -> None:
    if p.exists():
        shutil.rmtree(p)
        subprocess.run(["sync", "-f", str(p.parent)], check=True, timeout=600)
    p.mkdir()


def dedupd_config(base: Path, shares: list[Path], archive: Path, tag: str) -> Path:
    cfg = base / f"{tag}.toml"
    db = base / f"{tag}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    cfg.write_text(f'[database]\nurl = "sqlite:///{db}"\n\n[consolidate.bench]\n'
                   f'sources = {json.dumps([str(s) for s in shares])}\n'
                   f'archive = "{archive}"\n')
    return cfg


def dedupd_argv(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "dedupd", "consolidate", "-c", str(cfg), "bench", "--json"]


def first_import(base: Path, shares: list[Path], archive_name: str, tag: str,
                 checkout: Path, runs: Runs,
                 warm_mib: int) -> tuple[Path, dict]:  # type: ignore[type-arg]
    """One timed first import of the shares by the dedupd of checkout, into a fresh
    archive and index (added to runs); its config and its report's stats."""
    archive = base / archive_name
    fresh(archive)
    cfg = dedupd_config(base, shares, archive, tag)
    warm_up(shares, warm_mib)
    wall, cpu, out = timed(dedupd_argv(cfg), checkout)
    runs.add(wall, cpu)
    return cfg, json.loads(out)["stats"]


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def bench_tree(name: str, base: Path, shares: list[Path], rounds: int,
               baseline: Path | None = None, warm_mib: int = WARM_MIB) -> bool:
    """Interleaved rounds on one source set; print the table; False if the re-run read.
    With baseline (another dedupd checkout), its first import is timed in each round too."""
    n_files, n_bytes = tree_bytes(shares)
    print(f"--- {name}: {n_files:,} files, {mib(n_bytes)} in {len(shares)} shares", flush=True)
    ded, rs, rss, old = Runs(), Runs(), Runs(), Runs()
    old_stats: dict = {}  # type: ignore[type-arg]
    stats: dict = {}  # type: ignore[type-arg]
    for r in range(rounds):
        # Fresh target directories per round, all removed at the end: ext4 skips the
        # inodes freed in the last 60-300 s when it allocates one (recently_deleted),
        # so a tree removed just before a timed run makes every create scan past them
        # (measured: about 10% of a whole import's CPU), which a first import into an
        # archive does not pay.
        rdest = base / f"rsync{r}"
        cfg, stats = first_import(base, shares, f"archive{r}", "bench", ROOT, ded,
                                    warm_mib)
        fresh(rdest)
        warm_up(shares, warm_mib)
        wall, cpu, _ = timed(["rsync", "-a", *map(str, shares), str(rdest) + "/"])
        rs.add(wall, cpu)
        w2, c2, _ = timed(["sync", "-f", str(rdest)])
        rss.add(wall + w2, cpu + c2)
        if baseline is not None:
            _, old_stats = first_import(base, shares, f"archive-baseline{r}", "baseline",
                                        baseline, old, warm_mib)
    again_wall, _, out = timed(dedupd_argv(cfg), ROOT)
    again = json.loads(out)["stats"]
    r_files, r_bytes = tree_bytes([rdest])
    print(f"{'':28} {'best s':>8} {'range s':>13} {'cpu s':>8} {'written':>12} "
          f"{'read':>12} {'files':>7}")
    for label, runs, w, rd, f in (
            ("dedupd consolidate (first)", ded, stats["bytes_written"], stats["bytes_read"],
             stats["files_copied"]),
            ("rsync -a (no dedupe)", rs, r_bytes, n_bytes, r_files),
            ("rsync -a + sync -f", rss, r_bytes, n_bytes, r_files)):
        print(f"{label:28} {runs.cells()} {mib(w):>12} {mib(rd):>12} {f:>7,}")
    if old.wall:
        print(f"{'dedupd at --baseline':28} {old.cells()} {mib(old_stats['bytes_written']):>12} "
              f"{mib(old_stats['bytes_read']):>12} {old_stats['files_copied']:>7,}")
    print(f"{'dedupd re-run, nothing new':28} {again_wall:8.2f} {'':13} {'':8} "
          f"{mib(again['bytes_written']):>12} {mib(again['bytes_read']):>12} "
          f"{again['files_copied']:>7,}")
    print(f"{name}: dedupd/rsync best-of-{rounds} wall {ded.best() / rs.best():.2f}x "
          f"(vs rsync + sync -f {ded.best() / rss.best():.2f}x; worst/worst "
          f"{max(ded.wall) / max(rs.wall):.2f}x; {ded.paired(rs)})"
          + (f"; --baseline/rsync best {old.best() / rs.best():.2f}x, {old.paired(rs)}"
             if old.wall else "")
          + f"; {stats['distinct_contents']:,} distinct "
          f"contents, archive = {stats['bytes_written'] / max(n_bytes, 1):.1%} of the source "
          f"bytes; dedupd read {stats['bytes_read'] / max(n_bytes, 1):.2f}x the source bytes",
          flush=True)
    if again["files_copied"] or again["bytes_read"]:
        print("WARNING: the re-run copied or read something")
        return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000, help="generated tree size")
    ap.add_argument("--trees", default="generated,real", help="generated, real or both")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per tree")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    ap.add_argument("--baseline", type=Path, help="another dedupd checkout (its root) whose "
                    "first import is timed beside, round by round")
    ap.add_argument("--warm-mib", type=int, default=WARM_MIB, help="memory written and "
                    "freed before each timed command (0: none; module docstring)")
    args = ap.parse_args()
    if shutil.which("rsync") is None:
        sys.exit("rsync not installed (make deps installs it)")
    for checkout in (ROOT, args.baseline):  # as installed: no timed run compiles dedupd
        if checkout is not None:
            compile_dedupd(checkout)
    os.sync()
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs "
          f"(other work on the machine slows every tool; rounds are interleaved)")
    base = Path(tempfile.mkdtemp(prefix="dedupd-bench-consolidate-"))
    ok = True
    try:
        for tree in [t.strip() for t in args.trees.split(",") if t.strip()]:
            tb = base / tree
            tb.mkdir()
            t0 = time.monotonic()
            if tree == "generated":
                shares = make_shares(tb / "src", args.files)
            elif tree == "real":
                shares = make_real_shares(tb / "src")
            else:
                sys.exit(f"unknown tree {tree!r} (generated, real)")
            print(f"{tree} sources built in {time.monotonic() - t0:.1f}s", flush=True)
            ok = bench_tree(tree, tb, shares, args.rounds, args.baseline,
                            args.warm_mib) and ok
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
