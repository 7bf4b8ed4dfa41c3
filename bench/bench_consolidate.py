"""Bench: `dedupd consolidate` of a 20,000-file, 3-source import vs `rsync -a`.

Three shares overlap the way old backups do: about half of each share also
exists in another one (same bytes, other names and mtimes), and some photos
(real Pillow JPEGs with EXIF dates) appear in all three. dedupd imports each
distinct content once into an empty archive; rsync -a copies the three shares
into an empty directory as they are (no dedupe). Both run on the same
filesystem with a warm page cache (the trees were just written). dedupd's
copies are durable when it exits (syncfs per batch); rsync's are not, so the
time of rsync followed by `sync -f` is shown too.

Prints wall time, bytes written and bytes read for: dedupd first run, dedupd
re-run with nothing new, and rsync. Usage: python bench/bench_consolidate.py
[--files N] [--keep]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def run_dedupd(cfg: Path) -> tuple[float, dict]:  # type: ignore[type-arg]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "dedupd", "consolidate", "-c", str(cfg), "bench",
                        "--json"], capture_output=True, cwd=ROOT, timeout=3600)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"dedupd failed ({r.returncode}): {r.stderr.decode()[-2000:]}")
    return dt, json.loads(r.stdout)["stats"]


def run_rsync(shares: list[Path], dest: Path) -> tuple[float, float]:
    """(rsync -a wall time, + the `sync -f` that makes its copies durable as dedupd's are)."""
    if shutil.which("rsync") is None:
        sys.exit("rsync not installed (make deps installs it)")
    dest.mkdir()
    subprocess.run(["sync", "-f", str(dest)], check=True, timeout=600)
    t0 = time.monotonic()
    subprocess.run(["rsync", "-a", *[str(s) for s in shares], str(dest) + "/"], check=True,
                   timeout=3600)
    t1 = time.monotonic()
    subprocess.run(["sync", "-f", str(dest)], check=True, timeout=600)
    return t1 - t0, time.monotonic() - t0


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dedupd-bench-consolidate-"))
    try:
        t0 = time.monotonic()
        shares = make_shares(base / "src", args.files)
        n_files, n_bytes = tree_bytes(shares)
        print(f"sources: {n_files:,} files, {mib(n_bytes)} in 3 shares "
              f"(built in {time.monotonic() - t0:.1f}s)")
        archive = base / "archive"
        archive.mkdir()
        cfg = base / "bench.toml"
        cfg.write_text(f'[database]\nurl = "sqlite:///{base}/index.db"\n\n[consolidate.bench]\n'
                       f'sources = {json.dumps([str(s) for s in shares])}\n'
                       f'archive = "{archive}"\n')
        t1, s1 = run_dedupd(cfg)
        t2, s2 = run_dedupd(cfg)
        t3, t3s = run_rsync(shares, base / "rsync")
        r_files, r_bytes = tree_bytes([base / "rsync"])
        a_files, a_bytes = tree_bytes([archive])
        rows = [
            ("dedupd consolidate (first)", t1, s1["bytes_written"], s1["bytes_read"],
             s1["files_copied"]),
            ("dedupd consolidate (re-run)", t2, s2["bytes_written"], s2["bytes_read"],
             s2["files_copied"]),
            ("rsync -a (no dedupe)", t3, r_bytes, n_bytes, r_files),
            ("rsync -a + sync -f", t3s, r_bytes, n_bytes, r_files),
        ]
        print(f"{'':30} {'wall s':>8} {'written':>14} {'read':>14} {'files':>8}")
        for name, t, w, rd, f in rows:
            print(f"{name:30} {t:8.2f} {mib(w):>14} {mib(rd):>14} {f:>8,}")
        print(f"archive: {a_files - 1:,} files, {mib(a_bytes)} "
              f"= {a_bytes / n_bytes:.1%} of the source bytes "
              f"({s1['distinct_contents']:,} distinct contents)")
        print(f"ratios: dedupd/rsync wall time {t1 / t3:.2f}x first run "
              f"({t1 / t3s:.2f}x vs rsync + sync), {t2 / t3:.2f}x re-run; "
              f"bytes written {s1['bytes_written'] / r_bytes:.1%} of rsync's")
        if s2["files_copied"] or s2["bytes_read"]:
            print("WARNING: the re-run copied or read something")
            return 1
        return 0
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
