"""Where a consolidation first import's CPU goes: per process, next to the bare cost
of the same verified copies and next to `rsync -a`, interleaved round by round.

Per round, on the same shares (warm cache, each into a fresh directory):
- `dedupd consolidate` (fresh archive and index), with the CPU of each of its
  processes (the run, the index writer, the copy worker), polled from /proc;
- the bare loop, one Python process: walk + lstat; per file open, fstat, pread,
  fstat, XXH3-64 head and XXH3-128; dedupe by hash then bytes; per new content an
  O_TMPFILE in <year>/<month> of its mtime, write, fchmod, utimensat; per 1,024
  copies one syncfs, the copies dropped from the cache and read back, compared,
  linked by linkat. No index, no plan, no provenance: the floor of the work;
- the same bare loop without the syncfs and read-back (what the verify costs);
- `rsync -a`.
Not part of `make bench` (bench_consolidate.py is): run it when the first import
is slower than expected, under flock like any bench:

    .venv/bin/python bench/profile_consolidate.py --rounds 2 SHARE [SHARE...]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import xxhash

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1024


def _cpu_of(pid: int) -> tuple[float, int] | None:
    """(user + system seconds, parent pid) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck, int(fields[1])


def dedupd_import(shares: list[str], work: Path) -> str:
    archive = work / f"archive-{time.time_ns()}"
    archive.mkdir()
    cfg = work / "p.toml"
    db = work / f"p-{time.time_ns()}.db"
    cfg.write_text(f'[database]\nurl = "sqlite:///{db}"\n\n[consolidate.p]\n'
                   f'sources = {json.dumps(shares)}\narchive = "{archive}"\n')
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "dedupd", "consolidate", "-c", str(cfg), "p",
                          "--json"], stdout=subprocess.PIPE, cwd=ROOT)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(p.stdout.read() if p.stdout else b""))
    reader.start()
    seen: dict[int, float] = {}
    while p.poll() is None:  # the last ~20 ms of each process are not seen
        for d in os.listdir("/proc"):
            if d.isdigit() and (got := _cpu_of(int(d))) and p.pid in (int(d), got[1]):
                seen[int(d)] = got[0]
        time.sleep(0.02)
    reader.join()
    wall = time.monotonic() - t0
    stats = json.loads(out[0])["stats"]
    per = " / ".join(f"{v:.2f}" for _, v in sorted(seen.items()))
    return (f"dedupd: wall {wall:.2f} s, CPU per process {per} s (run / index writer / copy "
            f"worker), {stats['files_copied']:,} copies")


def bare(shares: list[str], dest: Path, verify: bool) -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    dest.mkdir()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    files: list[str] = []

    def walk(d: str) -> None:
        with os.scandir(d) as it:
            for e in sorted(it, key=lambda e: e.name):
                if e.is_dir(follow_symlinks=False):
                    walk(e.path)
                elif e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_size:
                    files.append(e.path)

    for s in shares:
        walk(s)
    dirs: dict[str, int] = {}
    seen: dict[bytes, bytes] = {}
    batch: list[tuple[str, int, int, bytes]] = []
    names = itertools.count()
    buf = bytearray(1 << 20)

    def flush() -> None:
        nonlocal buf
        if verify:
            libc.syncfs(dirs[""])
            for _, tfd, _, _ in batch:
                os.posix_fadvise(tfd, 0, 0, os.POSIX_FADV_DONTNEED)
            for _, tfd, _, _ in batch:
                os.posix_fadvise(tfd, 0, 0, os.POSIX_FADV_WILLNEED)
        for name, tfd, ddir, data in batch:
            if verify:
                if len(buf) < len(data) + 1:
                    buf = bytearray(len(data) + 1)
                got = os.preadv(tfd, [memoryview(buf)[:len(data) + 1]], 0)
                if got != len(data) or not buf.startswith(data):
                    raise SystemExit(f"bare loop: copy of {name} differs")
            os.link(f"/proc/self/fd/{tfd}", f"{next(names)}.{name}", dst_dir_fd=ddir)
            os.close(tfd)
        batch.clear()

    def dir_fd(rel: str) -> int:
        if rel not in dirs:
            (dest / rel).mkdir(parents=True, exist_ok=True)
            dirs[rel] = os.open(dest / rel, os.O_RDONLY | os.O_DIRECTORY)
        return dirs[rel]

    dir_fd("")
    for path in files:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        data = os.pread(fd, st.st_size + 1, 0)
        os.fstat(fd)
        os.close(fd)
        xxhash.xxh3_64_intdigest(data[:4096])
        full = xxhash.xxh3_128_digest(data)
        if seen.get(full) == data:
            continue
        seen[full] = data
        when = datetime.datetime.fromtimestamp(st.st_mtime)
        ddir = dir_fd(f"{when.year}/{when.month:02d}")
        tfd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=ddir)
        os.write(tfd, data)
        os.fchmod(tfd, st.st_mode & 0o7777)
        os.utime(tfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        batch.append((os.path.basename(path), tfd, ddir, data))
        if len(batch) >= BATCH:
            flush()
    flush()
    if verify:
        libc.syncfs(dirs[""])
    for fd in dirs.values():
        os.close(fd)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    label = "bare loop" if verify else "bare loop, no sync + read-back"
    return (f"{label}: wall {time.monotonic() - t0:.2f} s, CPU {cpu:.2f} s "
            f"({len(seen):,} copies of {len(files):,} files)")


def rsync(shares: list[str], dest: Path) -> str:
    t0 = time.monotonic()
    p = subprocess.Popen(["rsync", "-a", *shares, str(dest) + "/"])
    _, _, ru = os.wait4(p.pid, 0)
    return f"rsync -a: wall {time.monotonic() - t0:.2f} s, CPU {ru.ru_utime + ru.ru_stime:.2f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shares", nargs="+")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    shares = [os.path.abspath(s) for s in args.shares]
    work = Path(tempfile.mkdtemp(prefix="dedupd-profile-consolidate-"))
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}, load {os.getloadavg()[0]:.1f}", flush=True)
            for step in range(4):
                subprocess.run(["find", *shares, "-type", "f", "-exec", "cat", "{}", "+"],
                               stdout=subprocess.DEVNULL, check=True)
                if step == 0:
                    line = dedupd_import(shares, work)
                elif step < 3:
                    line = bare(shares, work / f"bare{r}-{step}", verify=step == 1)
                else:
                    line = rsync(shares, work / f"rsync{r}")
                print("  " + line, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
