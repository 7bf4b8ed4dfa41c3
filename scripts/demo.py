"""`make demo`: dedupe a fresh loop-mounted BTRFS image full of photo-like files.

Creates a 1 GiB BTRFS image, mounts it, writes JPEG photos plus "backup"
copies of some of them (fresh bytes via cp --reflink=never, so nothing is
shared yet), runs `dedupd run --once` (first as is: the fresh files wait out
settle_seconds, and the demo says so; then with --settle 0), and prints the space reclaimed as
`btrfs filesystem du` and `df` measure it. Everything is unmounted and
removed afterwards, also when something fails. Needs root (loop mount).
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PHOTOS = 40


def sh(*argv: str, capture: bool = False) -> str:
    r = subprocess.run(list(argv), check=True, text=True,
                       capture_output=capture)
    return r.stdout if capture else ""


def photo(seed: int) -> bytes:
    """A JPEG of noisy gradients (compresses like a real photo: 0.5-2 MB)."""
    rnd = random.Random(seed)
    w, h = rnd.choice([(1600, 1200), (1200, 1600), (2000, 1500)])
    try:
        from PIL import Image
    except ImportError:  # no Pillow: JPEG-looking random bytes of a photo's size
        return b"\xff\xd8\xff\xe0" + rnd.randbytes(rnd.randrange(500_000, 2_000_000))
    img = Image.frombytes("RGB", (w // 4, h // 4), rnd.randbytes(w * h * 3 // 16))
    img = img.resize((w, h))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


def fill(root: Path) -> tuple[int, int]:
    """Photos and backup copies; returns (files, duplicate bytes)."""
    lib = root / "Pictures" / "2024"
    lib.mkdir(parents=True)
    originals = []
    for k in range(PHOTOS):
        p = lib / f"IMG_{1000 + k}.jpg"
        p.write_bytes(photo(k))
        originals.append(p)
    dup, files = 0, PHOTOS
    for name, picks in (("Backup/phone-2024", originals[::2]),
                        ("Backup/old-laptop/Pictures", originals[::3]),
                        ("Shared/holiday", originals[:5])):
        d = root / name
        d.mkdir(parents=True)
        for p in picks:
            sh("cp", "--reflink=never", str(p), str(d / p.name))
            dup += p.stat().st_size
            files += 1
    return files, dup


def measure(mnt: Path) -> tuple[int, int]:
    """(bytes of disk used by file data, df used bytes) after a BTRFS commit."""
    sh("btrfs", "filesystem", "sync", str(mnt))
    line = sh("btrfs", "filesystem", "du", "-s", "--raw", str(mnt), capture=True).splitlines()[-1]
    _total, excl, shared = (int(x) for x in line.split()[:3])
    st = os.statvfs(mnt)
    return excl + shared, (st.f_blocks - st.f_bfree) * st.f_frsize


SETTLE_NOTE = """
Nothing deduplicated yet, on purpose: these files were written seconds ago, and
dedupd leaves a file alone until settle_seconds (default 300 s) have passed since
its last change, so it never works on a file that is still being copied or
edited. The daemon's next pass after that would take them. For this demo we do
not wait: --settle 0 considers every file now.
"""


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it loop-mounts a BTRFS image)", file=sys.stderr)
        return 1
    for tool in ("mkfs.btrfs", "btrfs", "mount", "umount"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run `make deps` first", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="dedupd-demo-"))
    img, mnt = work / "demo.img", work / "mnt"
    mnt.mkdir()
    mounted = False
    try:
        sh("truncate", "-s", "1G", str(img))
        sh("mkfs.btrfs", "-q", "-f", str(img), capture=True)
        sh("mount", "-o", "loop", str(img), str(mnt))
        mounted = True
        print(f"BTRFS image mounted at {mnt}; writing photos and backup copies ...")
        files, dup = fill(mnt)
        data0, df0 = measure(mnt)
        print(f"{files} files, {mib(dup)} of it in duplicate copies; "
              f"file data uses {mib(data0)} (df used {mib(df0)})\n")
        db = f"sqlite:///{work}/dedupd.db"  # a throwaway index instead of /var/lib/dedupd
        first = [sys.executable, "-m", "dedupd", "run", "--once", "--db", db, str(mnt)]
        print("$ dedupd run --once --db ... " + str(mnt))
        subprocess.run(first, check=True)
        print(SETTLE_NOTE)
        cmd = [*first[:4], "--settle", "0", *first[4:]]
        print("$ dedupd run --once --settle 0 --db ... " + str(mnt))
        subprocess.run(cmd, check=True)
        data1, df1 = measure(mnt)
        print(f"\nfile data now uses {mib(data1)} (df used {mib(df1)})")
        print(f"reclaimed: {mib(data0 - data1)} by `btrfs filesystem du`, "
              f"{mib(df0 - df1)} by df; duplicate copies were {mib(dup)}\n")
        print("$ dedupd run --once   # again: it looks only at inodes changed since the last "
              "run\n#   (the ones the dedupe itself rewrote), reads nothing, dedupes nothing")
        subprocess.run(cmd, check=True)
        print("\n$ dedupd stats " + str(mnt))
        subprocess.run([sys.executable, "-m", "dedupd", "stats", "--db", db, str(mnt)],
                       check=True)
        return 0
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(work, ignore_errors=True)
        print(f"cleaned up {work}")


if __name__ == "__main__":
    raise SystemExit(main())
