"""A real second user against copies the run stages itself (execute._send: the run
writes the bytes it read to a staged file, the copy worker compares that copy, read
back from the disk, with the source re-read through the handle it was read by).

The user changes its sources while their copies are in the worker (stopped by its
test hook), in ways that leave only the ctime to tell, or nothing at all:
- rewritten with other bytes of the same size, the mtime put back (touch -r);
- grown, then truncated back to its size (the same bytes again);
- rewritten through a shared memory map whose pages were already dirty: no page
  fault, so neither mtime nor ctime moves (the kernel stamps them at the first
  write fault of a clean page).
Each copy of a changed source gets no name and is refused as "changed": the
copy is what the run read, the source is not any more. Before, the memory-map
case was refused as "mismatch" (the copy differs from the source), which says
the archive's disk returned other bytes than were written.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.attacker import User, reachable
from tests.fixtures.consolidate import dedupd, import_stopped_at, manifest, write_config
from tests.integration.test_attack_copy_overlap import open_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

ACTS = {
    "same-size-mtime-back": 'for f in "$1"/f*.bin; do touch -r "$f" "$f.ref"; '
                            'head -c "$(stat -c %s "$f")" /dev/urandom | '
                            'dd of="$f" conv=notrunc status=none; '
                            'touch -r "$f.ref" "$f"; rm "$f.ref"; done',
    "grown-then-back": 'for f in "$1"/f*.bin; do n=$(stat -c %s "$f"); '
                       'truncate -s +1M "$f"; truncate -s "$n" "$f"; done',
}

# Holds every source mapped, each page dirtied once (the mtime and ctime move now),
# then on a line from stdin rewrites them through the map (no fault: nothing moves).
MAPPER = r"""
import mmap, os, sys
maps = []
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDWR)
    m = mmap.mmap(fd, os.fstat(fd).st_size)
    for off in range(0, len(m), mmap.PAGESIZE):
        m[off] = m[off]
    maps.append(m)
print("ready", flush=True)
sys.stdin.readline()
for m in maps:
    m[:] = bytes(255 - b for b in m[:])
print("done", flush=True)
sys.stdin.read()
"""


class _Mapper:
    """The user's MAPPER over names (each page dirtied, ready); rewrite() flips every
    byte through the maps, which moves no timestamp. A context manager."""

    def __init__(self, attacker: User, names: list[str]) -> None:
        self.p = subprocess.Popen(
            ["setpriv", f"--reuid={attacker.uid}", f"--regid={attacker.gid}",
             "--clear-groups", "--", "/usr/bin/python3", "-c", MAPPER, *names],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None and self.p.stdin is not None
        self.out, self.inp = self.p.stdout, self.p.stdin
        assert self.out.readline() == "ready\n"

    def rewrite(self) -> None:
        self.inp.write("go\n")
        self.inp.flush()
        assert self.out.readline() == "done\n"

    def __enter__(self) -> _Mapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inp.close()
        self.p.wait(timeout=30)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _sources(attacker: User, share: Path) -> dict[str, bytes]:
    for i in range(6):
        attacker.run('head -c "$2" /dev/urandom > "$1"; touch -d 2019-01-01T12:00 "$1"',
                     str(share / f"f{i}.bin"), str(20_000 + i))
    return {p.name: p.read_bytes() for p in share.iterdir()}


def _check_refused(out: bytes, archive: Path, old: dict[str, bytes], what: str) -> None:
    """Stopped at written:5 (batches of two): f0 and f1 placed before the act, f2..f5
    read and staged by the run before it, each refused as changed."""
    rep = json.loads(out)
    refused = sorted((p["path"].rsplit("/", 1)[1], p["reason"]) for p in rep["problems"])
    assert refused == [(f"f{i}.bin", "changed") for i in range(2, 6)], (what, refused)
    placed = {p.name: p.read_bytes() for p in archive.iterdir() if p.suffix == ".bin"}
    assert placed == {f"f{i}.bin": old[f"f{i}.bin"] for i in range(2)}, what
    assert not [p for p in manifest(archive) if b".dedupd-copy." in p], what


def _check_next_run(cfg: Path, archive: Path, share: Path, old: dict[str, bytes]) -> None:
    again = dedupd("consolidate", "-c", str(cfg), "x", "--json")
    assert json.loads(again.stdout)["stats"]["problems"] == 0, again.stdout
    archived = {_sha(p.read_bytes()) for p in archive.rglob("*.bin")}
    now = [p.read_bytes() for p in share.glob("f*.bin")]
    assert archived == {_sha(b) for b in (old["f0.bin"], old["f1.bin"], *now)}


@pytest.mark.parametrize("act", sorted(ACTS))
def test_source_changed_so_only_its_ctime_tells(
        tmp_path: Path, open_dir: Path, attacker: User, act: str) -> None:  # noqa: F811
    share, archive = open_dir / "share", tmp_path / "archive"
    share.mkdir()
    archive.mkdir()
    attacker.owns(share)
    old = _sources(attacker, share)
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db", "x", [share], archive,
                       'layout = "{name}"\n')
    with import_stopped_at(cfg, "x", "written:5", "--json") as (run, worker):
        attacker.run(ACTS[act], str(share))
        os.kill(worker, signal.SIGCONT)
        out, err = run.communicate(timeout=120)
    assert b"Traceback" not in err, err
    _check_refused(out, archive, old, act)
    _check_next_run(cfg, archive, share, old)


def test_source_rewritten_through_a_dirty_memory_map_is_changed_not_mismatch(
        tmp_path: Path, attacker: User, loopfs: Callable[[str, str], Path]) -> None:
    """The sources on a filesystem of their own: the worker's syncfs of the archive
    (and the index's fsyncs) must not write their dirty pages back, which would make
    the next write through the map fault and stamp the ctime."""
    mnt = loopfs("ext4", "64M")
    reachable(mnt)
    share, archive = mnt / "share", tmp_path / "archive"
    share.mkdir()
    archive.mkdir()
    attacker.owns(share)
    old = _sources(attacker, share)
    # their blocks allocated and written now: else a later writeback (ext4's journal
    # commits, every 5 s, write back the pages of blocks they allocate) cleans the
    # pages the map dirtied, and the next write through it faults and moves the ctime
    subprocess.run(["sync", "-f", str(share)], check=True)
    # f2..f5: read and staged before the stop (f0 and f1 placed by then; rewritten so,
    # no index could tell: their ctime says unchanged)
    names = [str(share / f"f{i}.bin") for i in range(2, 6)]
    with _Mapper(attacker, names) as mapper:
        stamped = {n: os.stat(n) for n in names}  # as the run will index and read them
        cfg = write_config(tmp_path / "c.toml", tmp_path / "db", "x", [share], archive,
                           'layout = "{name}"\n')
        with import_stopped_at(cfg, "x", "written:5", "--json") as (run, worker):
            mapper.rewrite()
            for n in names:  # nothing but the bytes changed
                st, was = os.stat(n), stamped[n]
                assert (st.st_ctime_ns, st.st_mtime_ns) == (was.st_ctime_ns, was.st_mtime_ns)
                assert Path(n).read_bytes() != old[os.path.basename(n)]
            os.kill(worker, signal.SIGCONT)
            out, err = run.communicate(timeout=120)
        assert b"Traceback" not in err, err
        _check_refused(out, archive, old, "mmap")
    _check_next_run(cfg, archive, share, old)


def _zfs_sources(base: Path, n: int, size: int) -> tuple[Path, set[str]]:
    share = base / "share"
    share.mkdir()
    for i in range(n):
        (share / f"g{i}.bin").write_bytes(os.urandom(size + i))  # no size groups
    return share, {_sha(p.read_bytes()) for p in share.iterdir()}


def _whole(archive: Path, contents: set[str]) -> list[Path]:
    """Every name in the archive is a whole source content; the temp names left."""
    files = {p: _sha(p.read_bytes()) for p in archive.rglob("*.bin")}
    assert set(files.values()) <= contents and len(set(files.values())) == len(files)
    return [p for p in archive.rglob(".dedupd-copy.*")]


def test_run_killed_with_staged_copies_not_sent_on_zfs_fuse(
        tmp_path: Path, zfs_archive: Callable[[str], Path]) -> None:
    """zfs-fuse has no O_TMPFILE: the run stages its copies under temp names. Killed
    -9 with two copies of a batch staged and not yet sent (its worker never had
    them), the next run sweeps both names and imports every file."""
    from dedupd import testpoints
    from dedupd.cli import main
    from dedupd.consolidate.execute import BATCH_ENV
    from tests.integration.test_attack_grow import _in_child

    share, contents = _zfs_sources(tmp_path, 6, 30_000)
    archive = zfs_archive("killed")
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db", "x", [share], archive,
                       'layout = "{name}"\n')
    where = os.fsencode(archive)

    def run() -> int:
        me, staged = os.getpid(), [0]

        def kill_at_third(_point: str, path: bytes) -> None:  # stage_bytes, in the run
            if os.getpid() == me and path == where:
                staged[0] += 1
                if staged[0] == 3:
                    os.kill(me, signal.SIGKILL)

        os.environ[BATCH_ENV] = "4"
        with testpoints.acting(("mutate",), kill_at_third):
            return main(["consolidate", "x", "-c", str(cfg)])

    code, _ = _in_child(run)
    assert code == -signal.SIGKILL
    temps = _whole(archive, contents)
    assert len(temps) == 2 and not list(archive.rglob("*.bin")), temps
    rep = json.loads(dedupd("consolidate", "-c", str(cfg), "x", "--json").stdout)
    assert rep["stats"]["stale_temp_files"] == 2 and rep["stats"]["problems"] == 0, rep
    assert not _whole(archive, contents)
    assert {_sha(p.read_bytes()) for p in archive.rglob("*.bin")} == contents


def test_quota_reached_while_the_run_stages_on_zfs_fuse(
        tmp_path: Path, zfs_archive: Callable[[str], Path]) -> None:
    """The archive's dataset reaches its quota while the run writes its staged files
    (temp names: zfs-fuse has no O_TMPFILE): each copy that did not fit is a problem
    of its own, the run goes on and exits 1, no temp name stays, every name holds a
    whole content, and once there is room the next run imports the rest."""
    share, contents = _zfs_sources(tmp_path, 16, 300_000)
    archive = zfs_archive("full")
    ds = subprocess.run(["zfs", "list", "-H", "-o", "name", str(archive)], check=True,
                        capture_output=True, text=True).stdout.strip()
    subprocess.run(["zfs", "set", "quota=2M", ds], check=True, capture_output=True)
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db", "x", [share], archive,
                       'layout = "{name}"\n')
    r = dedupd("consolidate", "-c", str(cfg), "x", "--json", check=False)
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    rep = json.loads(r.stdout)
    assert rep["problems"] and {p["reason"] for p in rep["problems"]} == {"error"}, rep
    assert all("quota" in p["detail"] or "space" in p["detail"] for p in rep["problems"])
    assert rep["stats"]["files_copied"] + len(rep["problems"]) == 16
    assert not _whole(archive, contents)
    assert len(list(archive.rglob("*.bin"))) == rep["stats"]["files_copied"]
    subprocess.run(["zfs", "set", "quota=none", ds], check=True, capture_output=True)
    again = json.loads(dedupd("consolidate", "-c", str(cfg), "x", "--json").stdout)
    assert again["stats"]["problems"] == 0, again["problems"]
    assert {_sha(p.read_bytes()) for p in archive.rglob("*.bin")} == contents
    assert not _whole(archive, contents)


@pytest.mark.parametrize("limit", [336, 368, 384])
def test_a_whole_size_group_spread_out_under_a_low_limit(tmp_path: Path, limit: int) -> None:
    """One unsorted size group of inventory.UNSORTED_FILES distinct files, each in a
    source directory and an archive directory of its own, under `ulimit -n` 336..384
    (320 is too few for the group's reads, as before the run staged its copies): the
    run holds every source of the group open once it is read (sortcopy.sort_group)
    and its source directories' handles; staging its copies, per copy its staged file
    and its archive directory's handle until the batch was sent: "Too many open
    files while copying" for most of the group at every run below 384 (and at 384 with
    the archive directories kept). All imported."""
    from dedupd.consolidate.inventory import UNSORTED_FILES
    from tests.integration.test_attack_fd_limit import import_spread_out

    import_spread_out(tmp_path, [5000] * UNSORTED_FILES, limit)  # one size group


@pytest.mark.parametrize("fs", ["ext4", "zfs-fuse"])
def test_metadata_set_by_the_worker_on_a_copy_the_run_staged(
        tmp_path: Path, open_dir: Path, attacker: User, fs: str,  # noqa: F811
        request: pytest.FixtureRequest) -> None:
    """The run creates the staged file (root's, 0600: an O_TMPFILE on ext4, a temp name
    on zfs-fuse); the worker gives it the source's metadata: the user's own setuid
    program stays theirs with its bits (the owner was kept), an odd mode and the
    mtime (to the nanosecond where the filesystem keeps them) come along, and
    nothing stays root's 0600."""
    share = open_dir / "share"
    share.mkdir()
    attacker.owns(share)
    modes = {"suid": 0o4755, "odd": 0o751, "private": 0o600, "sgid": 0o2711}
    for name, mode in modes.items():
        attacker.run('head -c "$2" /dev/urandom > "$1"; chmod "$3" "$1"; '
                     'touch -d "2021-03-04 05:06:07.123456789" "$1"',
                     str(share / f"{name}.bin"), str(6000 + mode), oct(mode)[2:])
    archive = tmp_path / "archive" if fs == "ext4" else \
        request.getfixturevalue("zfs_archive")("meta")
    archive.mkdir(exist_ok=True)
    cfg = write_config(tmp_path / "c.toml", tmp_path / "db", "x", [share], archive,
                       'layout = "{name}"\n')
    rep = json.loads(dedupd("consolidate", "-c", str(cfg), "x", "--json").stdout)
    assert rep["stats"]["files_copied"] == len(modes) and not rep["problems"], rep
    for name, mode in modes.items():
        src, got = os.stat(share / f"{name}.bin"), os.stat(archive / f"{name}.bin")
        assert (got.st_uid, got.st_gid) == (attacker.uid, attacker.gid), name
        assert got.st_mode & 0o7777 == mode, (name, oct(got.st_mode))
        # zfs-fuse keeps whole seconds (as any copy there, made by anyone)
        tick = 10**9 if fs == "zfs-fuse" else 1
        assert got.st_mtime_ns == src.st_mtime_ns // tick * tick, name
        assert (archive / f"{name}.bin").read_bytes() == (share / f"{name}.bin").read_bytes()


def test_temp_copy_and_source_rewritten_alike_on_zfs_fuse(
        tmp_path: Path, attacker: User, loopfs: Callable[[str, str], Path],
        zfs_archive: Callable[[str], Path]) -> None:
    """zfs-fuse has no O_TMPFILE: the run stages each copy under a temp name in the
    archive, with its source's owner and mode already. While the worker is stopped
    the owner rewrites the sources through a dirty memory map (no ctime moves) and
    writes the same bytes into the staged copies: copy and source re-read agree, but
    neither is what the run read and hashed (what the index would record). Each is
    refused (the copy's hash is checked where it has a name), none gets its name."""
    mnt = loopfs("ext4", "64M")
    reachable(mnt)
    share = mnt / "share"
    share.mkdir()
    attacker.owns(share)
    old = _sources(attacker, share)
    subprocess.run(["sync", "-f", str(share)], check=True)  # as in the test above
    archive = zfs_archive("alike")
    reachable(archive)
    names = [str(share / f"f{i}.bin") for i in range(2, 6)]
    with _Mapper(attacker, names) as mapper:
        cfg = write_config(tmp_path / "c.toml", tmp_path / "db", "x", [share], archive,
                           'layout = "{name}"\n')
        with import_stopped_at(cfg, "x", "written:5", "--json") as (run, worker):
            mapper.rewrite()
            # each staged copy (f2..f5, told apart by size) gets its source's new bytes
            attacker.run('for t in "$1"/.dedupd-copy.*.tmp; do n=$(stat -c %s "$t"); '
                         'dd if="$2/f$((n - 20000)).bin" of="$t" conv=notrunc status=none; '
                         'done', str(archive), str(share))
            temps = sorted(archive.glob(".dedupd-copy.*.tmp"))
            assert len(temps) == 4, temps
            now = {Path(n).read_bytes() for n in names}
            assert {t.read_bytes() for t in temps} == now  # the attack took
            os.kill(worker, signal.SIGCONT)
            out, err = run.communicate(timeout=120)
        assert b"Traceback" not in err, err
        rep = json.loads(out)
        refused = sorted((p["path"].rsplit("/", 1)[1], p["reason"]) for p in rep["problems"])
        assert refused == [(f"f{i}.bin", "mismatch") for i in range(2, 6)], refused
        placed = {p.name: p.read_bytes() for p in archive.iterdir() if p.suffix == ".bin"}
        assert placed == {f"f{i}.bin": old[f"f{i}.bin"] for i in range(2)}
        assert not list(archive.glob(".dedupd-copy.*"))
