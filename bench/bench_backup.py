"""`dedupd backup` vs the plain pipelines a user would write, same data, same run.

Builds a zfs-fuse pool with a mixed dataset (half random, half text), then, in
interleaved rounds: `zfs send | zstd -3 > /dev/null`, the rivals
`zfs send | zstd -3 | rclone rcat remote:file` (the seed design's pipeline) and
`zfs send | zstd -3 | aws s3 cp - s3://bucket/key` (a multipart upload: 8 MiB
parts, which dedupd never does), and `dedupd backup --full` to the same rclone
local remote and S3 (moto_server on 127.0.0.1). Prints the median of N rounds
and the range, throughput (send-stream bytes / median wall seconds), the ratio
of each dedupd run to its rival (median vs median, and the median and range of
the per-round ratios, each round's pair run back to back), the
core-seconds spent on each run (ours, the zfs-fuse daemon's and moto_server's;
not other users'), peak RSS of the dedupd process tree (GNU time), and peak
temp disk (the spooled chunk, sampled from /proc/PID/fd). It also times each
target taking the same chunks alone (PUT + confirming HEAD, what dedupd's
uploader does per chunk, nothing else running): when that alone is slower than
the pipeline, no overlap can reach the pipeline's speed, and `ceiling` says how
close it can get.

Fairness: both sides send the same data from the same pool (dedupd its own new
snapshot of it, as it does in use), with zstd -3 on one thread; the cache is
warmed once for both; before every timed run dirty pages are written out
(sync), so no run pays for the writeback of another's output; each side's
output is deleted between runs, untimed (the rival's file, and dedupd's
previous backup: its remote prune then finds nothing to delete; deleting
hundreds of MiB on this disk costs a timed run up to ~0.5 s that the rival
never pays); the rclone local remote is on its own file system (--remote-dir,
tmpfs /dev/shm by default), as a backup disk is not the pool's disk: with both
on one ext4, every txg sync of zfs-fuse (dedupd's snapshot, hold, destroy)
fsyncs the pool's image file and waits there for the writeback of the chunks
just written (and of other users' writes: 0.01-1.1 s per `zfs destroy`
measured), while the rival's output is never written back within its timing;
and the order of
the pair alternates from round to round (rival first, then dedupd first), so
neither always runs in the wake of the other. The machine may be shared: the
load average is printed next to each size's figures.

    python bench/bench_backup.py [--data-mib 768,4096] [--chunk-mib 64]
        [--rounds 5,3] [--targets rclone,s3] [--no-detail] [--remote-dir DIR]
        [--baseline CHECKOUT]

--baseline CHECKOUT also runs another checkout's `dedupd backup` (a `git
worktree add DIR OLD_COMMIT`, whose dedupd package `python -m` finds in its
working directory) in every round beside this one's, in alternating order,
and prints its row, its ratio to the rival and this checkout's speed-up over
it: old and new code measured in the same rounds, under the same load.

Several sizes (--data-mib 768,4096) are benched one after the other in the same
run and their ratios printed side by side at the end: a larger dataset shows
the per-run fixed cost separately (it stays the same while the stream grows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def sh(*argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def ensure_zfs() -> None:
    if subprocess.run(["zpool", "list", "-H"], capture_output=True).returncode != 0:
        sys.exit("zfs-fuse is not running (start it with `zfs-fuse`); bench needs it")


def make_data(root: Path, mib: int) -> None:
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(mib // 4):
        if i % 2:
            data = rng.randbytes(4 * 1024 * 1024)
        else:
            line = f"line {i} of some fairly repetitive text {rng.random()}\n".encode()
            data = (line * (4 * 1024 * 1024 // len(line) + 1))[: 4 * 1024 * 1024]
        (root / f"f{i:04d}.bin").write_bytes(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PeakSpool(threading.Thread):
    """Samples the size of dedupd's spooled chunk (an unlinked temp file) via /proc."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, False
        self.tmp = tempfile.gettempdir()

    def run(self) -> None:
        while not self.stop:
            for p in _tree(self.pid):
                fd_dir = Path(f"/proc/{p}/fd")
                try:
                    for fd in fd_dir.iterdir():
                        # the spool is an O_TMPFILE in the temp dir: "/tmp/#123 (deleted)"
                        link = os.readlink(fd)
                        if link.startswith(self.tmp) and link.endswith("(deleted)"):
                            self.peak = max(self.peak, fd.stat().st_size)
                except OSError:
                    pass
            time.sleep(0.02)


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out += _tree(int(k))
    return out


class Cpu:
    """CPU core-seconds spent on our behalf: this process and its waited-for children
    (the pipeline, `dedupd backup` and its rclone/zstd/zfs children), plus the
    zfs-fuse daemon (which does the work of `zfs send`) and moto_server. Other
    users of the machine are not counted (except their use of zfs-fuse)."""

    servers: list[int] = []

    @classmethod
    def now(cls) -> float:
        own: float = sum(getattr(resource.getrusage(w), f)
                         for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                         for f in ("ru_utime", "ru_stime"))
        return own + sum(_proc_cpu(p) for p in cls.servers)


def _proc_cpu(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def zfs_fuse_pids() -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "zfs-fuse":
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def busy() -> float:
    """CPU so far, after writing dirty pages out: a timed run never pays for the
    writeback of an earlier run's output (called right before each timed run)."""
    os.sync()
    return Cpu.now()


def time_pipeline(snap: str) -> tuple[float, float]:
    c, t = busy(), time.monotonic()
    subprocess.run(["bash", "-c", f"set -o pipefail; zfs send {snap} | zstd -3 -q -c "
                    "> /dev/null"], check=True)
    return time.monotonic() - t, busy() - c


def time_rival(snap: str, sink: list[str], env: dict[str, str]) -> tuple[float, float]:
    """`zfs send | zstd -3 | SINK`, the pipeline a user would write instead of dedupd."""
    cmd = " ".join(shlex.quote(x) for x in sink)
    c, t = busy(), time.monotonic()
    subprocess.run(["bash", "-c", f"set -o pipefail; zfs send {shlex.quote(snap)} | "
                    f"zstd -3 -q -c | {cmd}"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - t, busy() - c


def rival_sinks(base: Path, remote: Path, port: int
                ) -> dict[str, tuple[list[str], list[str]]]:
    """Per target: (upload argv reading stdin, cleanup argv)."""
    aws = ["aws", "--endpoint-url", f"http://127.0.0.1:{port}", "s3"]
    rc = ["rclone", "--config", str(base / "rclone.conf")]
    dest = f"loc:{remote}/rival.zst"
    return {"rclone": ([*rc, "rcat", dest], [*rc, "deletefile", dest]),
            "s3": ([*aws, "cp", "-", "s3://bench/rival.zst"],
                   [*aws, "rm", "s3://bench/rival.zst"])}


def time_stream_stage(snap: str, chunk: int) -> tuple[float, float]:
    """dedupd's own stream stage in-process: send | zstd | chunk + SHA-256 + spool,
    no upload: the part of `dedupd backup` that replaces the rival pipeline."""
    sys.path.insert(0, str(ROOT))
    from dedupd.backup import compress
    from dedupd.backup.chunker import Spool, chunks

    c, t = busy(), time.monotonic()
    pipe = compress.send_pipeline(["zfs", "send", snap], "zstd", 3)
    with Spool() as sp:
        for _ in chunks(pipe.stdout, chunk, sp):
            pass
    pipe.close()
    return time.monotonic() - t, busy() - c


def split_stored(snap: str, chunk: int, out: Path) -> list[tuple[Path, int, str]]:
    """The compressed stream cut into chunk files, as dedupd would upload them."""
    out.mkdir()
    pipe = subprocess.Popen(["bash", "-c", f"zfs send {snap} | zstd -3 -q -c"],
                            stdout=subprocess.PIPE)
    assert pipe.stdout is not None
    files: list[tuple[Path, int, str]] = []
    while data := pipe.stdout.read(chunk):
        f = out / f"{len(files):06d}"
        f.write_bytes(data)
        files.append((f, len(data), hashlib.sha256(data).hexdigest()))
    if pipe.wait():
        raise SystemExit("zfs send | zstd failed")
    return files


def time_target_alone(conf: Path, job: str, files: list[tuple[Path, int, str]],
                      env: dict[str, str], tag: str) -> tuple[float, float]:
    """PUT + confirming HEAD of every chunk file through dedupd's own target, in order."""
    sys.path.insert(0, str(ROOT))
    from dedupd import config
    from dedupd.backup.targets import confirmed, make_target

    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    os.environ.pop("AWS_CA_BUNDLE", None)
    tgt = make_target(config.load(conf).backups[job].target)
    keys = [f"alone-{tag}/{p.name}" for p, _, _ in files]
    c, t = busy(), time.monotonic()
    for key, (path, size, sha) in zip(keys, files, strict=True):
        with path.open("rb") as f:
            tgt.put(key, f, size, sha, None, "STANDARD")
        if not confirmed(tgt.head(key), size, sha, None):
            raise SystemExit(f"{job}: {key} not confirmed")
    wall, cpu = time.monotonic() - t, busy() - c
    for key in keys:
        tgt.delete(key)
    return wall, cpu


def time_dedupd(conf: Path, job: str, env: dict[str, str], checkout: Path = ROOT
                ) -> tuple[float, float, int, int, dict[str, Any]]:
    """`dedupd backup --full` of the checkout's dedupd package (`python -m` finds it in
    the working directory first: --baseline runs another checkout's the same way)."""
    argv = ["/usr/bin/time", "-v", sys.executable, "-m", "dedupd", "backup", job, "--full",
            "--json", "-c", str(conf)]
    c, t = busy(), time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=checkout)
    mon = PeakSpool(p.pid)
    mon.start()
    out, err = p.communicate()
    wall, cpu = time.monotonic() - t, busy() - c
    mon.stop = True
    if p.returncode != 0:
        raise SystemExit(f"dedupd backup failed: {err[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))  # type: ignore[union-attr]
    return wall, cpu, rss * 1024, mon.peak, json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-mib", default="768,4096",
                    help="dataset size(s) in MiB, comma-separated (e.g. 768,4096: each "
                    "is benched in turn and the ratios are printed side by side)")
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--rounds", default="5,3",
                    help="rounds per dataset size: one number, or one per size (5,3)")
    ap.add_argument("--targets", default="rclone,s3",
                    help="comma-separated: rclone, s3 (default both)")
    ap.add_argument("--remote-dir", default=None,
                    help="where the rclone local remote lives (default: /dev/shm when it "
                    "is a tmpfs with room, else the bench's temp dir)")
    ap.add_argument("--no-detail", dest="detail", action="store_false",
                    help="skip the stream-stage and target-alone rows (faster)")
    ap.add_argument("--baseline", type=Path, default=None, metavar="CHECKOUT",
                    help="also time `dedupd backup` of another checkout (e.g. a `git "
                    "worktree` of an older commit) in every round, next to this one's "
                    "(order alternating): old and new code side by side")
    a = ap.parse_args()
    a.jobs = [j for j in ("rclone", "s3") if j in a.targets.split(",")]
    sizes = [int(x) for x in a.data_mib.split(",")]
    rounds = [int(x) for x in a.rounds.split(",")]
    rounds += [rounds[-1]] * (len(sizes) - len(rounds))
    for tool in ("zfs", "zpool", "zstd", "rclone", "/usr/bin/time",
                 *(["aws"] if "s3" in a.jobs else [])):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} missing (make deps)")
    ensure_zfs()
    port = free_port()
    moto_bin = Path(sys.executable).parent / "moto_server"
    moto = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary: list[tuple[int, dict[str, float], tuple[float, float]]] = []
    try:
        wait_port(port)
        import boto3
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="b", aws_secret_access_key="b").create_bucket(
            Bucket="bench")
        Cpu.servers = [*zfs_fuse_pids(), moto.pid]
        for mib, n in zip(sizes, rounds, strict=True):
            a.data_mib, a.rounds = mib, n
            load0 = os.getloadavg()[0]
            ratios = bench_size(a, port)
            summary.append((mib, ratios, (load0, os.getloadavg()[0])))
            print()
    finally:
        os.kill(moto.pid, signal.SIGTERM)
        moto.wait()
    print_summary(a.jobs, summary)
    return 0


def print_summary(jobs: list[str], summary: list[tuple[int, dict[str, float],
                                                          tuple[float, float]]]) -> None:
    """The throughput ratios of every size and target of this run, side by side."""
    rivals = {"rclone": "zfs send | zstd -3 | rclone rcat (local remote)",
              "s3": "zfs send | zstd -3 | aws s3 cp - (MULTIPART, 8 MiB parts; dedupd: "
                    "one PUT per chunk)"}
    print("throughput ratio dedupd / rival, median vs median (per-round ratios: "
          "median, range):")
    for job in jobs:
        cells = "   ".join(f"{mib} MiB: {r[job]:.2f} (rounds {r[job + '-med']:.2f}, "
                           f"{r[job + '-lo']:.2f}-{r[job + '-hi']:.2f})"
                           for mib, r, _ in summary)
        print(f"  {job:6} vs {rivals[job]}\n         {cells}")
    print("  load average (start-end of each size): " + ", ".join(
        f"{mib} MiB {lo:.2f}-{hi:.2f}" for mib, _, (lo, hi) in summary))


def bench_size(a: argparse.Namespace, port: int) -> dict[str, float]:
    """One dataset of a.data_mib MiB in its own pool: every row, then its report."""
    base = Path(tempfile.mkdtemp(prefix="dedupd-bench-"))
    pool = f"bb{uuid.uuid4().hex[:8]}"
    remote = remote_root(a.remote_dir, a.data_mib) / f"dedupd-bench-remote-{pool}"
    try:
        sh("truncate", "-s", f"{a.data_mib * 2 + 512}M", str(base / "pool.img"))
        sh("zpool", "create", "-m", str(base / "mnt"), pool, str(base / "pool.img"))
        sh("zfs", "create", f"{pool}/data")
        make_data(base / "mnt" / "data", a.data_mib)
        sh("zfs", "snapshot", f"{pool}/data@rival")
        stream = int(subprocess.run(["bash", "-c", f"zfs send {pool}/data@rival | wc -c"],
                                    check=True, capture_output=True, text=True).stdout)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "b", "AWS_SECRET_ACCESS_KEY": "b",
               "AWS_DEFAULT_REGION": "us-east-1"}
        env.pop("AWS_CA_BUNDLE", None)
        conf = write_conf(base, remote, pool, port, a.chunk_mib)
        snap = f"{pool}/data@rival"
        time_pipeline(snap)  # warm the cache for everyone
        files = (split_stored(snap, a.chunk_mib << 20, base / "stored") if a.detail
                 else [])
        sinks = rival_sinks(base, remote, port)
        rows: dict[str, list[tuple[float, float]]] = {}
        mem: dict[str, int] = {}
        spool: dict[str, int] = {}
        waits: dict[str, list[tuple[float, float]]] = {"rclone": [], "s3": []}
        stored = 0
        load = os.getloadavg()
        round_loads: list[float] = []
        for r in range(a.rounds):
            round_loads.append(os.getloadavg()[0])
            rows.setdefault("pipeline", []).append(time_pipeline(snap))
            if a.detail:
                rows.setdefault("stage", []).append(time_stream_stage(snap, a.chunk_mib << 20))
            for job in a.jobs:
                def baseline(job: str) -> None:
                    w, c, _, _, res = time_dedupd(conf, job, env, a.baseline)
                    drop_backups(remote, job, port)
                    rows.setdefault(f"{job}-base", []).append((w, c))
                    rows.setdefault(f"{job}-base-stream", []).append(
                        (res["stream_seconds"], 0.0))

                def rival(job: str = job) -> None:
                    rows.setdefault(f"{job}-rival", []).append(
                        time_rival(snap, sinks[job][0], env))
                    subprocess.run(sinks[job][1], env=env, check=True, capture_output=True)

                if r % 2 == 0:  # alternate: rival first, then dedupd first
                    rival()
                if a.baseline and r % 2 == 0:
                    baseline(job)
                wall, cpu, rss, peak, res = time_dedupd(conf, job, env)
                drop_backups(remote, job, port)
                if a.baseline and r % 2 == 1:
                    baseline(job)
                if r % 2 == 1:
                    rival()
                rows.setdefault(job, []).append((wall, cpu))
                waits[job].append((res["stream_waited_seconds"],
                                   res["upload_waited_seconds"]))
                # the stream and its uploads only: without the per-run fixed costs
                # (interpreter, imports, client, catalog, snapshot, manifest, prune)
                rows.setdefault(f"{job}-stream", []).append((res["stream_seconds"], 0.0))
                mem[job] = max(mem.get(job, 0), rss)
                spool[job] = max(spool.get(job, 0), peak)
                stored = res["total_size"]
                if a.detail:
                    rows.setdefault(f"{job}-alone", []).append(
                        time_target_alone(conf, job, files, env, str(r)))
        if a.detail:
            shutil.rmtree(base / "stored")
        print(f"rclone local remote in {remote.parent} ({fs_type(remote)})")
        report(a, stream, stored, rows, mem, spool, waits, (load, os.getloadavg()),
               round_loads)
        return ratios(a.jobs, rows)
    finally:
        destroy_pool(pool)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(remote, ignore_errors=True)


def median_wall(runs: list[tuple[float, float]]) -> float:
    return statistics.median(w for w, _ in runs)


def round_ratios(rows: dict[str, list[tuple[float, float]]], job: str, which: str = ""
                 ) -> list[float]:
    """Throughput ratio dedupd/rival of each round (the pair ran back to back);
    which="base": the --baseline checkout's."""
    ours = rows[f"{job}-{which}" if which else job]
    return [r / d for (r, _), (d, _) in zip(rows[f"{job}-rival"], ours, strict=True)]


def remote_root(given: str | None, data_mib: int) -> Path:
    """--remote-dir, else /dev/shm when it is a tmpfs with room for the rival's
    output and one backup (the stored stream is at most the data's size), else
    the temp dir."""
    if given:
        return Path(given)
    shm = Path("/dev/shm")
    if shm.is_dir() and fs_type(shm) == "tmpfs":
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > 3 * data_mib * 1024 * 1024:
            return shm
    return Path(tempfile.gettempdir())


def fs_type(path: Path) -> str:
    return sh("stat", "-f", "-c", "%T", str(path)).stdout.strip()


def drop_backups(remote: Path, job: str, port: int) -> None:
    """Delete the job's backups on its target (untimed), as the rival's output is:
    the next timed run then prunes no remote data (its local prune still runs)."""
    if job == "rclone":
        shutil.rmtree(remote / job, ignore_errors=True)
        return
    import boto3
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="b", aws_secret_access_key="b")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench",
                                                            Prefix=f"{job}/"):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket="bench", Key=o["Key"])


def ratios(jobs: list[str], rows: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Per job: median vs median, and the median, lowest and highest per-round ratio."""
    out: dict[str, float] = {}
    for job in jobs:
        pairs = round_ratios(rows, job)
        out[job] = median_wall(rows[f"{job}-rival"]) / median_wall(rows[job])
        out[f"{job}-med"] = statistics.median(pairs)
        out[f"{job}-lo"], out[f"{job}-hi"] = min(pairs), max(pairs)
    return out


def destroy_pool(pool: str) -> None:
    """Retry: zfs-fuse says "pool is busy" for a while after a heavy run."""
    for attempt in range(10):
        subprocess.run(["zpool", "destroy", "-f", pool], capture_output=True)
        if subprocess.run(["zpool", "list", "-H", pool], capture_output=True).returncode:
            return
        time.sleep(0.5 * (attempt + 1))
    print(f"warning: could not destroy pool {pool}; run `zpool destroy -f {pool}`",
          file=sys.stderr)


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit("moto_server did not start")


def write_conf(base: Path, remote: Path, pool: str, port: int, chunk_mib: int) -> Path:
    remote.mkdir()
    (base / "rclone.conf").write_text("[loc]\ntype = local\n")
    common = (f'dataset = "{pool}/data"\nchunk_size = {chunk_mib * 1024 * 1024}\n'
              'compression = "zstd"\ncompression_level = 3\n'
              "[backups.{job}.retention]\nkeep_local = 1\nkeep_remote = 1\n")
    conf = base / "dedupd.toml"
    conf.write_text(
        f'[daemon]\nruntime_dir = "{base}/run"\n[database]\nurl = "sqlite:///{base}/i.db"\n'
        "[backups.rclone]\n" + common.format(job="rclone") +
        f'[backups.rclone.target]\nkind = "rclone"\nremote = "loc"\npath = "{remote}"\n'
        f'config = "{base}/rclone.conf"\n'
        "[backups.s3]\n" + common.format(job="s3") +
        f'[backups.s3.target]\nkind = "s3"\nbucket = "bench"\n'
        f'endpoint_url = "http://127.0.0.1:{port}"\n')
    return conf


def report(a: argparse.Namespace, stream: int, stored: int,
           rows: dict[str, list[tuple[float, float]]], mem: dict[str, int],
           spool: dict[str, int], waits: dict[str, list[tuple[float, float]]],
           load: tuple[tuple[float, ...], tuple[float, ...]],
           round_loads: list[float]) -> None:
    mib = 1024 * 1024
    cores = os.cpu_count() or 1

    def med(key: str) -> tuple[float, float]:
        """(median wall seconds, median CPU seconds)."""
        return (statistics.median(w for w, _ in rows[key]),
                statistics.median(c for _, c in rows[key]))

    def spread(key: str) -> str:
        ws = [w for w, _ in rows[key]]
        return f"{min(ws):.2f}-{max(ws):.2f}"

    print(f"dataset {a.data_mib} MiB, send stream {stream / mib:.0f} MiB, stored (zstd -3) "
          f"{stored / mib:.0f} MiB, chunk {a.chunk_mib} MiB, {a.rounds} interleaved rounds "
          f"(median of N, range), {cores} cores, load average {load[0][0]:.2f} before, "
          f"{load[1][0]:.2f} after (other users' load included); at the start of each "
          f"round: {' '.join(f'{x:.2f}' for x in round_loads)}")
    print(f"{'what':50} {'median s':>8} {'range s':>11} {'MiB/s':>7} {'CPU s':>6} "
          f"{'max RSS':>8} {'temp disk':>9}")

    def line(label: str, key: str, rss: str = "-", disk: str = "-") -> float:
        t, cpu = med(key)
        print(f"{label:50} {t:8.2f} {spread(key):>11} {stream / mib / t:7.1f} {cpu:6.2f} "
              f"{rss:>8} {disk:>9}")
        return t

    line("zfs send | zstd -3 > /dev/null", "pipeline", disk="0")
    if a.detail:
        line("dedupd stream stage (no upload)", "stage", disk=f"{a.chunk_mib:.1f}MB")
    labels = {"rclone": ("zfs send | zstd -3 | rclone rcat loc:file",
                         "dedupd backup -> rclone local remote",
                         "rclone rcat + HEAD (SHA-256)"),
              "s3": ("zfs send | zstd -3 | aws s3 cp - s3:// (MULTIPART)",
                     "dedupd backup -> S3 (moto, one PUT per chunk)",
                     "S3 PUT + HEAD (moto)")}
    for job in a.jobs:
        rival, ours, alone = labels[job]
        rt = line(rival, f"{job}-rival", disk="0")
        t = line(ours, job, f"{mem[job] / mib:.1f}MB", f"{spool[job] / mib:.1f}MB")
        pairs = round_ratios(rows, job)
        print(f"    throughput ratio dedupd/rival: median vs median {rt / t:.2f}; per round "
              f"{' '.join(f'{x:.2f}' for x in pairs)} (median "
              f"{statistics.median(pairs):.2f})")
        st = med(f"{job}-stream")[0]
        print(f"    of which send+compress+hash+upload {st:.2f}s (ratio {rt / st:.2f}); the "
              f"rest {t - st:.2f}s: fixed per-run costs (interpreter, imports, catalog, "
              "snapshot, manifest, prune)")
        sw = statistics.median(x for x, _ in waits[job])
        uw = statistics.median(y for _, y in waits[job])
        print(f"    stream waited {sw:.2f}s for uploads, uploads waited {uw:.2f}s for the "
              "stream (medians)")
        if f"{job}-base" in rows:
            bt = line(f"  baseline: {a.baseline}"[:50], f"{job}-base")
            bs = med(f"{job}-base-stream")[0]
            print(f"    baseline: throughput ratio to the rival {rt / bt:.2f}, per round "
                  f"{' '.join(f'{x:.2f}' for x in round_ratios(rows, job, 'base'))}; "
                  f"stream {bs:.2f}s, fixed {bt - bs:.2f}s; this checkout / baseline "
                  f"{bt / t:.2f}")
        if not a.detail:
            continue
        ta = line(f"  {alone} alone, same chunks", f"{job}-alone")
        # Overlap hides the slower of stream and upload at best, and only while a
        # core is free: the work of both (in core-seconds) spread over every core
        # is a floor on the wall time too.
        need = (med("stage")[1] + med(f"{job}-alone")[1]) / cores
        print(f"    ceiling: target alone vs rival {min(1.0, rt / ta):.2f}; CPU of stream "
              f"stage + target alone over {cores} cores {min(1.0, rt / need):.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
