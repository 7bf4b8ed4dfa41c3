"""`dedupd backup` vs the plain pipeline `zfs send | zstd > /dev/null`, same data.

Builds a zfs-fuse pool with a mixed dataset (half random, half text), then, in
alternation: the rival pipeline on a snapshot, and `dedupd backup --full` to an
rclone local remote and to S3 (moto_server on 127.0.0.1). Prints throughput
(send-stream bytes / wall seconds), the ratio to the pipeline, the CPU
core-seconds spent on each run (ours, the zfs-fuse daemon's and moto_server's;
not other users'), peak RSS of the dedupd process tree (GNU time), and peak
temp disk (the spooled chunk, sampled from /proc/PID/fd). It also times each
target taking the same chunks alone (PUT + confirming HEAD, what dedupd's
uploader does per chunk, nothing else running): when that alone is slower than
the pipeline, no overlap can reach the pipeline's speed, and `ceiling` says how
close it can get.

    python bench/bench_backup.py [--data-mib 768] [--chunk-mib 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
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
    return Cpu.now()


def time_pipeline(snap: str) -> tuple[float, float]:
    c, t = busy(), time.monotonic()
    subprocess.run(["bash", "-c", f"set -o pipefail; zfs send {snap} | zstd -3 -q -c "
                    "> /dev/null"], check=True)
    return time.monotonic() - t, busy() - c


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


def time_dedupd(conf: Path, job: str, env: dict[str, str]
                ) -> tuple[float, float, int, int, dict[str, Any]]:
    argv = ["/usr/bin/time", "-v", sys.executable, "-m", "dedupd", "backup", job, "--full",
            "--json", "-c", str(conf)]
    c, t = busy(), time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
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
    ap.add_argument("--data-mib", type=int, default=768)
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    for tool in ("zfs", "zpool", "zstd", "rclone", "/usr/bin/time"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} missing (make deps)")
    ensure_zfs()
    base = Path(tempfile.mkdtemp(prefix="dedupd-bench-"))
    pool = f"bb{uuid.uuid4().hex[:8]}"
    moto = None
    try:
        sh("truncate", "-s", f"{a.data_mib * 2 + 512}M", str(base / "pool.img"))
        sh("zpool", "create", "-m", str(base / "mnt"), pool, str(base / "pool.img"))
        sh("zfs", "create", f"{pool}/data")
        make_data(base / "mnt" / "data", a.data_mib)
        sh("zfs", "snapshot", f"{pool}/data@rival")
        stream = int(subprocess.run(["bash", "-c", f"zfs send {pool}/data@rival | wc -c"],
                                    check=True, capture_output=True, text=True).stdout)
        port = free_port()
        moto_bin = Path(sys.executable).parent / "moto_server"
        moto = subprocess.Popen([str(moto_bin), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "b", "AWS_SECRET_ACCESS_KEY": "b"}
        env.pop("AWS_CA_BUNDLE", None)
        conf = write_conf(base, pool, port, a.chunk_mib)
        wait_port(port)
        import boto3
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="b", aws_secret_access_key="b").create_bucket(
            Bucket="bench")
        snap = f"{pool}/data@rival"
        Cpu.servers = [*zfs_fuse_pids(), moto.pid]
        time_pipeline(snap)  # warm the cache for everyone
        files = split_stored(snap, a.chunk_mib << 20, base / "stored")
        rows: dict[str, list[tuple[float, float]]] = {}
        mem: dict[str, int] = {}
        spool: dict[str, int] = {}
        waits: dict[str, list[tuple[float, float]]] = {"rclone": [], "s3": []}
        stored = 0
        load = os.getloadavg()
        for r in range(a.rounds):
            rows.setdefault("pipeline", []).append(time_pipeline(snap))
            rows.setdefault("stage", []).append(time_stream_stage(snap, a.chunk_mib << 20))
            for job in ("rclone", "s3"):
                wall, cpu, rss, peak, res = time_dedupd(conf, job, env)
                rows.setdefault(job, []).append((wall, cpu))
                waits[job].append((res["stream_waited_seconds"],
                                   res["upload_waited_seconds"]))
                # the stream and its uploads only: without the per-run fixed costs
                # (interpreter, imports, client, catalog, snapshot, manifest, prune)
                rows.setdefault(f"{job}-stream", []).append((res["stream_seconds"], 0.0))
                mem[job] = max(mem.get(job, 0), rss)
                spool[job] = max(spool.get(job, 0), peak)
                stored = res["total_size"]
                rows.setdefault(f"{job}-alone", []).append(
                    time_target_alone(conf, job, files, env, str(r)))
        report(a, stream, stored, rows, mem, spool, waits, (load, os.getloadavg()))
    finally:
        if moto is not None:
            os.kill(moto.pid, signal.SIGTERM)
            moto.wait()
        destroy_pool(pool)
        shutil.rmtree(base, ignore_errors=True)
    return 0


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


def write_conf(base: Path, pool: str, port: int, chunk_mib: int) -> Path:
    (base / "remote").mkdir()
    (base / "rclone.conf").write_text("[loc]\ntype = local\n")
    common = (f'dataset = "{pool}/data"\nchunk_size = {chunk_mib * 1024 * 1024}\n'
              'compression = "zstd"\ncompression_level = 3\n'
              "[backups.{job}.retention]\nkeep_local = 1\nkeep_remote = 1\n")
    conf = base / "dedupd.toml"
    conf.write_text(
        f'[daemon]\nruntime_dir = "{base}/run"\n[database]\nurl = "sqlite:///{base}/i.db"\n'
        "[backups.rclone]\n" + common.format(job="rclone") +
        f'[backups.rclone.target]\nkind = "rclone"\nremote = "loc"\npath = "{base}/remote"\n'
        f'config = "{base}/rclone.conf"\n'
        "[backups.s3]\n" + common.format(job="s3") +
        f'[backups.s3.target]\nkind = "s3"\nbucket = "bench"\n'
        f'endpoint_url = "http://127.0.0.1:{port}"\n')
    return conf


def report(a: argparse.Namespace, stream: int, stored: int,
           rows: dict[str, list[tuple[float, float]]], mem: dict[str, int],
           spool: dict[str, int], waits: dict[str, list[tuple[float, float]]],
           load: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
    mib = 1024 * 1024

    def med(key: str) -> tuple[float, float]:
        return (statistics.median(w for w, _ in rows[key]),
                statistics.median(c for _, c in rows[key]))

    base, base_cpu = med("pipeline")
    print(f"dataset {a.data_mib} MiB, send stream {stream / mib:.0f} MiB, stored (zstd -3) "
          f"{stored / mib:.0f} MiB, chunk {a.chunk_mib} MiB, {a.rounds} rounds (median), "
          f"{os.cpu_count()} cores, load average {load[0][0]:.2f} before, "
          f"{load[1][0]:.2f} after")
    print(f"{'what':46} {'seconds':>8} {'MiB/s':>7} {'ratio':>6} {'CPU s':>6} "
          f"{'max RSS':>8} {'temp disk':>9}")

    def line(label: str, key: str, rss: str = "-", disk: str = "-") -> float:
        t, cpu = med(key)
        print(f"{label:46} {t:8.2f} {stream / mib / t:7.1f} {base / t:6.2f} {cpu:6.2f} "
              f"{rss:>8} {disk:>9}")
        return t

    line("zfs send | zstd -3 > /dev/null", "pipeline", disk="0")
    line("dedupd stream stage (no upload), same snapshot", "stage",
         disk=f"{a.chunk_mib:.1f}MB")
    for job, label, alone in (
            ("rclone", "dedupd backup -> rclone local remote", "rclone rcat + HEAD (SHA-256)"),
            ("s3", "dedupd backup -> S3 (moto_server, 127.0.0.1)", "S3 PUT + HEAD (moto)")):
        line(label, job, f"{mem[job] / mib:.1f}MB", f"{spool[job] / mib:.1f}MB")
        t = med(f"{job}-stream")[0]
        print(f"{'  of which send+compress+hash+upload':46} {t:8.2f} {stream / mib / t:7.1f} "
              f"{base / t:6.2f} (the rest: fixed per-run costs)")
        sw = statistics.median(x for x, _ in waits[job])
        uw = statistics.median(y for _, y in waits[job])
        print(f"{'':4}stream waited {sw:.2f}s for uploads, uploads waited {uw:.2f}s "
              "for the stream")
        t = line(f"  {alone} alone, same chunks", f"{job}-alone")
        # Overlap hides the slower of stream and upload at best, and only while a
        # core is free: the work of both (in core-seconds) spread over every core
        # is a floor on the wall time too.
        need = (med("stage")[1] + med(f"{job}-alone")[1]) / (os.cpu_count() or 1)
        print(f"{'':4}ceiling: target alone vs pipeline {min(1.0, base / t):.2f}; "
              f"CPU of stream stage + target alone over {os.cpu_count()} cores "
              f"{min(1.0, base / need):.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
