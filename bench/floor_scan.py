"""The floor of a first scan in Python: the barest program doing `dedupd scan`'s
work, timed side by side with `jdupes -r` and `dedupd scan` (issue #14).

The work, as dedupd does it: a walk by directory handle (os.scandir of an fd, an
lstat per entry, each subdirectory opened O_NOFOLLOW relative to its parent and
checked to be the listed inode); files grouped by size (one entry per inode);
every size with two inodes or more read by dedupd's rule (a file of at most
128 KiB whole in one read: XXH3-64 of its first 4 KiB and XXH3-128 of all; a
larger one its first 4 KiB, and whole only when heads collide); one row per file
(path, identity, stat, hashes) into SQLite (the index's pragmas) in one
transaction. No problems kept, no progress, no index to answer a rescan: a floor.

Two forms: `one` (one process) and `two` (two processes, split the cheapest way
found: the top of the tree listed breadth first until SPLIT_DIRS directories are
pending, their fds shared out between the parent and one forked child; the child
walks its half and sends its files back by marshal; the parent groups the sizes
and sends the child every file and a share of the size groups (by their first
reads' bytes: FLOOR_PARENT_SHARE for the parent, which also groups); the child
writes the rows of the files nobody reads while the parent reads, reads its own
share, and writes the rest once the parent's hashes come, then commits).

Each tool runs as its own process, in interleaved rounds (BENCH_ROUNDS, default
5) on a warm cache; wall is the best [range], CPU the user + system seconds of
the process and its children (wait4) in that best round. Trees are
bench_scan.py's (BENCH_TREES="bulk" or "real" for one).

    flock /work/wt/bench.lock .venv/bin/python bench/floor_scan.py
"""

from __future__ import annotations

import json
import marshal
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import Any

import xxhash

HEAD, WHOLE_READ, CHUNK = 4096, 128 * 1024, 1 << 20
_ENC = sys.getfilesystemencoding()
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
# a file as walked: (path, dev, ino, size, mtime_ns, ctime_ns)
File = tuple[bytes, int, int, int, int, int]
Pending = list[tuple[int, bytes]]  # directories opened and checked, not listed yet


def _open_dir(parent: int, name: str, st: os.stat_result) -> int:
    fd = os.open(name, _DIR, dir_fd=parent)
    got = os.fstat(fd)
    if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise OSError(f"{name}: replaced during the walk")
    return fd


def list_dir(fd: int, path: bytes, out: list[File], pending: Pending) -> None:
    """One directory's files to out, its subdirectories (opened) to pending; fd closed."""
    base = path + b"/"
    try:
        with os.scandir(fd) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                mode = st.st_mode
                if S_ISREG(mode):
                    if st.st_size:
                        out.append((base + e.name.encode(_ENC, "surrogateescape"),
                                    st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                    st.st_ctime_ns))
                elif S_ISDIR(mode):
                    pending.append((_open_dir(fd, e.name, st),
                                    base + e.name.encode(_ENC, "surrogateescape")))
    finally:
        os.close(fd)


def walk(pending: Pending, out: list[File]) -> None:
    """The whole subtree of each pending directory, depth first."""
    while pending:
        fd, path = pending.pop()
        list_dir(fd, path, out, pending)


def walk_top(pending: Pending, out: list[File], dirs: int) -> None:
    """List directories breadth first until `dirs` of them are pending (or none is):
    subtrees to share out."""
    k = 0
    while k < len(pending) and len(pending) - k < dirs:
        fd, path = pending[k]
        list_dir(fd, path, out, pending)
        k += 1
    del pending[:k]


def open_root(root: bytes) -> Pending:
    return [(os.open(root, _DIR), root.rstrip(b"/"))]


def candidates(files: list[File]) -> list[list[File]]:
    """Sizes with two inodes or more: one member per inode."""
    by: dict[int, dict[tuple[int, int], File]] = {}
    for f in files:
        by.setdefault(f[3], {}).setdefault((f[1], f[2]), f)
    return [list(m.values()) for m in by.values() if len(m) > 1]


def read_small(path: bytes, size: int) -> tuple[int, bytes]:
    fd = os.open(path, _FILE)
    try:
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    return xxhash.xxh3_64_intdigest(data[:HEAD]), xxhash.xxh3_128_digest(data)


def read_head(path: bytes) -> int:
    fd = os.open(path, _FILE)
    try:
        return xxhash.xxh3_64_intdigest(os.pread(fd, HEAD, 0))
    finally:
        os.close(fd)


def read_whole(path: bytes, buf: bytearray) -> bytes:
    fd = os.open(path, _FILE)
    h = xxhash.xxh3_128()
    mv = memoryview(buf)
    try:
        while n := os.readv(fd, (buf,)):
            h.update(mv[:n])
    finally:
        os.close(fd)
    return h.digest()


# what a file's reads learnt: path -> (head, full or None)
Learnt = dict[bytes, tuple[int, bytes | None]]


def read_groups(groups: list[list[File]]) -> Learnt:
    """The rule over size groups: small whole; large heads, whole where heads collide."""
    learnt: Learnt = {}
    buf = bytearray(CHUNK)
    for g in groups:
        if g[0][3] <= WHOLE_READ:
            for f in g:
                learnt[f[0]] = read_small(f[0], f[3])
            continue
        heads: dict[int, list[bytes]] = {}
        for f in g:
            h = read_head(f[0])
            heads.setdefault(h, []).append(f[0])
            learnt[f[0]] = (h, None)
        for h, paths in heads.items():
            if len(paths) > 1:
                for p in paths:
                    learnt[p] = (h, read_whole(p, buf))
    return learnt


def count_groups(groups: list[list[File]], learnt: Learnt) -> int:
    n = 0
    for g in groups:
        fulls: dict[bytes, int] = {}
        for f in g:
            full = learnt[f[0]][1]
            if full is not None:
                fulls[full] = fulls.get(full, 0) + 1
        n += sum(1 for c in fulls.values() if c > 1)
    return n


_DDL = ("CREATE TABLE files (path BLOB, dev INTEGER, ino INTEGER, size INTEGER, "
        'mtime_ns INTEGER, ctime_ns INTEGER, head INTEGER, "full" BLOB)')
_INSERT = "INSERT INTO files VALUES (?,?,?,?,?,?,?,?)"


def open_index(db: str) -> sqlite3.Connection:
    c = sqlite3.connect(db, isolation_level=None)
    for pragma in ("synchronous=NORMAL", "journal_mode=WAL", "wal_autocheckpoint=8192"):
        c.execute(f"PRAGMA {pragma}")
    c.execute(_DDL)
    c.execute("BEGIN")
    return c


def _s64(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def rows(files: list[File], learnt: Learnt) -> list[tuple[Any, ...]]:
    out = []
    none = (None, None)
    for f in files:
        head, full = learnt.get(f[0], none)
        out.append((*f, None if head is None else _s64(head), full))
    return out


class Clock:
    """CPU seconds of each stage of one process (time.process_time)."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.t = time.process_time()

    def lap(self, name: str) -> None:
        t = time.process_time()
        self.stages[name] = self.stages.get(name, 0.0) + t - self.t
        self.t = t


def one(root: bytes, db: str) -> dict[str, Any]:
    clock = Clock()
    files: list[File] = []
    walk(open_root(root), files)
    clock.lap("walk")
    groups = candidates(files)
    clock.lap("size groups")
    learnt = read_groups(groups)
    clock.lap("reads + XXH3")
    c = open_index(db)
    c.executemany(_INSERT, rows(files, learnt))
    c.execute("COMMIT")
    c.close()
    clock.lap("SQLite rows")
    return {"files": len(files), "read": len(learnt), "groups": count_groups(groups, learnt),
            "stages": clock.stages}


SPLIT_DIRS = 256  # directories listed before the rest of the walk is shared out
PARENT_SHARE = float(os.environ.get("FLOOR_PARENT_SHARE", "0.65"))  # of the read bytes


def _send(fd: int, obj: Any) -> None:
    data = marshal.dumps(obj)
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def _recv(fd: int) -> Any:
    def exact(n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            b = os.read(fd, min(n - got, 1 << 20))
            if not b:
                raise EOFError("the other process ended")
            parts.append(b)
            got += len(b)
        return b"".join(parts)
    return marshal.loads(exact(int.from_bytes(exact(8), "little")))


def _share(groups: list[list[File]], share: float) -> tuple[list[list[File]], list[list[File]]]:
    """Size groups split by the bytes their first reads cost: (parent's, child's)."""
    mine: list[list[File]] = []
    theirs: list[list[File]] = []
    got = [0, 0]
    for g in groups:
        cost = len(g) * min(g[0][3], WHOLE_READ) + 4096 * len(g)
        k = 0 if got[0] * (1 - share) <= got[1] * share else 1
        (mine, theirs)[k].append(g)
        got[k] += cost
    return mine, theirs


def two(root: bytes, db: str) -> dict[str, Any]:
    """The parent walks half, groups the sizes, reads its share of them; the child
    walks the other half, reads the rest and writes every row (the index's
    writer)."""
    clock = Clock()
    files: list[File] = []
    pending = open_root(root)
    walk_top(pending, files, SPLIT_DIRS)  # the top, until there is enough to share
    to_child, from_parent = os.pipe()[::-1]
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(to_child)
            os.close(from_child)
            for fd, _ in pending[0::2]:
                os.close(fd)
            _child(pending[1::2], db, from_parent, to_parent)
            code = 0
        finally:
            os._exit(code)
    os.close(from_parent)
    os.close(to_parent)
    for fd, _ in pending[1::2]:
        os.close(fd)
    mine_files = len(files)
    walk(pending[0::2], files)
    clock.lap("walk (half)")
    theirs_files = _recv(from_child)
    groups = candidates(files + theirs_files)
    mine, theirs = _share(groups, PARENT_SHARE)
    _send(to_child, (files, theirs, [f[0] for g in mine for f in g]))
    clock.lap("merge, size groups, send")
    learnt = read_groups(mine)
    _send(to_child, learnt)
    clock.lap("reads + XXH3 (share), send")
    learnt.update(_recv(from_child))
    n = count_groups(groups, learnt)
    _, status = os.waitpid(pid, 0)
    if status:
        raise SystemExit("the child failed")
    clock.lap("groups, wait")
    return {"files": len(files) + len(theirs_files), "read": len(learnt), "groups": n,
            "stages": clock.stages, "top": mine_files}


def _child(pending: Pending, db: str, inp: int, out: int) -> None:
    """Walk pending, send the files; then read the groups given, write every row."""
    got: list[File] = []
    walk(pending, got)
    _send(out, got)
    theirs_files, groups, their_reads = _recv(inp)
    read = set(their_reads)
    read.update(f[0] for g in groups for f in g)
    every = got + theirs_files
    c = open_index(db)
    c.executemany(_INSERT, rows([f for f in every if f[0] not in read], {}))
    learnt = read_groups(groups)
    theirs = _recv(inp)  # the parent sends first: both sending at once fills both pipes
    _send(out, learnt)
    learnt.update(theirs)
    c.executemany(_INSERT, rows([f for f in every if f[0] in read], learnt))
    c.execute("COMMIT")
    c.close()


# ---- the side-by-side runner -------------------------------------------------------

def run(argv: list[str]) -> tuple[float, float, bytes]:
    """Wall seconds, CPU seconds (user + system, with reaped children) and stdout."""
    t0 = time.perf_counter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.dup2(w, 1)
        os.execv(argv[0], argv)
    os.close(w)
    chunks = []
    while b := os.read(r, 1 << 20):
        chunks.append(b)
    os.close(r)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed")
    return wall, ru.ru_utime + ru.ru_stime, b"".join(chunks)


def tools(root: Path, db: Callable[[], str]) -> dict[str, Callable[[], list[str]]]:
    from common import DEDUPD

    me = [sys.executable, __file__]
    return {
        "jdupes -r": lambda: ["/usr/bin/jdupes", "-r", "-q", str(root)],
        "dedupd scan": lambda: [DEDUPD, "scan", "--json", "--no-progress", "--db",
                                f"sqlite:///{db()}", str(root)],
        "floor, 1 process": lambda: [*me, "one", str(root), db()],
        "floor, 2 processes": lambda: [*me, "two", str(root), db()],
    }


def bench(label: str, root: Path, rounds: int) -> None:
    from common import warm

    tmp = tempfile.mkdtemp(prefix="dedupd-floor-")
    n = [0]

    def db() -> str:
        n[0] += 1
        return f"{tmp}/i{n[0]}.db"

    warm(root)
    load0 = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    got: dict[str, list[tuple[float, float, bytes]]] = {}
    try:
        for _ in range(rounds):
            for name, argv in tools(root, db).items():
                got.setdefault(name, []).append(run(argv()))
            for f in Path(tmp).iterdir():
                f.unlink()
    finally:
        for f in Path(tmp).iterdir():
            f.unlink()
        os.rmdir(tmp)
    load1 = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    jd = min(w for w, _, _ in got["jdupes -r"])
    print(f"--- {label} ({root}); best of {rounds} interleaved rounds, warm cache; "
          f"load {load0} / {load1}")
    print(f"{'':20} {'wall s [range]':>20} {'CPU s':>6} {'/jdupes':>8}")
    for name, runs in got.items():
        best = min(runs, key=lambda r: r[0])
        walls = [r[0] for r in runs]
        print(f"{name:20} {best[0]:6.3f} [{min(walls):.2f}-{max(walls):.2f}] "
              f"{best[1]:6.2f} {best[0] / jd:8.2f}")
    for name in ("floor, 1 process", "floor, 2 processes"):
        doc = json.loads(min(got[name], key=lambda r: r[0])[2])
        stages = ", ".join(f"{k} {v:.3f}" for k, v in doc["stages"].items())
        print(f"  {name}: {doc['files']} files, {doc['read']} read, {doc['groups']} groups;"
              f" CPU s of the {'parent' if '2' in name else 'process'}: {stages}")
    doc = json.loads(min(got["dedupd scan"], key=lambda r: r[0])[2])["stats"]
    print(f"  dedupd scan: {doc['files_seen']} files, {doc['files_hashed']} read, "
          f"{doc['groups']} groups")


def main(argv: list[str]) -> int:
    if argv[:1] in (["one"], ["two"]):
        doc = (one if argv[0] == "one" else two)(os.fsencode(argv[1]), argv[2])
        print(json.dumps(doc))
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scan import real_tree, tree

    trees = os.environ.get("BENCH_TREES", "bulk real").split()
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    for label, root in (("bulk", tree), ("real", real_tree)):
        if label in trees:
            bench(label, root(), rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
