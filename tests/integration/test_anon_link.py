"""An anonymous copy (fsops/anon.py) gets its name by linkat(AT_EMPTY_PATH) where the
kernel allows it, else through /proc/self/fd/N: seen in the system calls (strace) of
a real process, as root and as a real unprivileged user. Never over a name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dedupd.fsops import anon
from tests.fixtures.attacker import User, reachable
from tests.fixtures.components import require_tools

REPO = Path(__file__).resolve().parents[2]

# Run as `python -c SCRIPT DIR UID GID` from REPO (this tree's dedupd). Everything is
# imported before the uid changes: the interpreter's own files are root's alone.
SCRIPT = """
import os, sys, traceback
from dedupd.fsops import anon
d, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if uid:  # a real unprivileged user: no capability is left once the uid changes
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
dev = os.fstat(dfd).st_dev

def made(data):
    fd = anon.open_in(dfd, dev)
    assert fd is not None, "no anonymous file"
    os.write(fd, data)
    return fd

def refused(fd, name):
    try:
        anon.link(fd, dfd, name)
    except FileExistsError:
        return
    raise AssertionError("a name was replaced")

anon.link(made(b"own"), dfd, b"own")  # opened and linked by one process
inherited = made(b"inherited")
pid = os.fork()
if pid == 0:
    try:
        anon.link(inherited, dfd, b"inherited")  # opened under its parent's credentials
        anon.link(made(b"later"), dfd, b"later")
        refused(made(b"x"), b"own")
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, "the child failed"
refused(made(b"y"), b"own")
"""

_LINKAT = re.compile(r'^(\d+) +linkat\((\S+), "([^"]*)", \S+, "([^"]*)", (\w+)\) = '
                     r"(0|-1 (\w+))")


def _traced_links(tmp_path: Path, uid: int, gid: int) -> tuple[Path, dict[int, list[str]]]:
    """SCRIPT run under strace as uid/gid in a fresh directory: that directory and,
    per process in order, each linkat as 'HOW NAME RESULT' (HOW: empty for
    AT_EMPTY_PATH on the handle, proc for /proc/self/fd/N; probe names as 'probe')."""
    require_tools("strace")
    d = tmp_path / "d"
    d.mkdir()
    os.chown(d, uid, gid)
    reachable(d)
    trace = tmp_path / "trace"
    r = subprocess.run(["strace", "-f", "-qq", "-e", "trace=linkat", "-e", "signal=none",
                        "-o", str(trace), sys.executable, "-c", SCRIPT, str(d), str(uid),
                        str(gid)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls: dict[int, list[str]] = {}
    for line in trace.read_text().splitlines():
        m = _LINKAT.match(line)
        assert m, f"unexpected trace line: {line}"
        pid, src_dir, src, name, flags, _, err = m.groups()
        if src == "" and flags == "AT_EMPTY_PATH":
            how = "empty"
        else:
            assert src.startswith("/proc/self/fd/") and src_dir == "AT_FDCWD" and \
                flags == "AT_SYMLINK_FOLLOW", line
            how = "proc"
        name = "probe" if name.startswith(".dedupd-copy.") else name
        calls.setdefault(int(pid), []).append(f"{how} {name} {err or 0}")
    return d, calls


def _named(d: Path, owner: int) -> None:
    assert sorted(os.listdir(d)) == ["inherited", "later", "own"]  # the probe's name went
    for name in ("inherited", "later", "own"):
        assert (d / name).read_bytes() == name.encode()
        assert (d / name).stat().st_uid == owner


def test_anon_link_as_root_takes_no_path(tmp_path: Path) -> None:
    """As root (CAP_DAC_READ_SEARCH) every link is made on the file's handle, even
    for a file its parent opened: no /proc path is walked, and a name that exists
    is refused (EEXIST) with no second try."""
    d, calls = _traced_links(tmp_path, 0, 0)
    parent, child = calls.values()
    assert parent == ["empty probe 0", "empty own 0", "empty own EEXIST"]
    assert child == ["empty inherited 0", "empty later 0", "empty own EEXIST"]
    _named(d, 0)


def test_anon_link_unprivileged_falls_back_to_proc(tmp_path: Path, attacker: User) -> None:
    """As a real unprivileged user, a file opened under other credentials (its parent's)
    is refused AT_EMPTY_PATH on every kernel (ENOENT): it is linked through /proc, and
    that process goes through /proc from then on, EEXIST included. A file the process
    opened itself is linked either way (Linux >= 6.10 allows AT_EMPTY_PATH there)."""
    d, calls = _traced_links(tmp_path, attacker.uid, attacker.gid)
    parent, child = calls.values()
    assert child == ["empty inherited ENOENT", "proc inherited 0", "proc later 0",
                     "proc own EEXIST"]
    assert parent in (["empty probe 0", "empty own 0", "empty own EEXIST"],
                      ["empty probe ENOENT", "proc probe 0", "proc own 0", "proc own EEXIST"])
    _named(d, attacker.uid)


def test_anon_link_own_failure_is_reported_and_not_remembered(tmp_path: Path) -> None:
    """A failure that is the link's own (its directory was removed: ENOENT, as a
    refusal reads) is raised as the /proc link always raised it, and does not send
    the process to /proc for the links after it."""
    gone, kept = tmp_path / "gone", tmp_path / "kept"
    gone.mkdir()
    kept.mkdir()
    gfd = os.open(gone, os.O_RDONLY | os.O_DIRECTORY)
    kfd = os.open(kept, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = anon.open_in(gfd, os.fstat(gfd).st_dev)
        if fd is None:
            pytest.skip("no O_TMPFILE on the test filesystem")
        gone.rmdir()
        assert not anon._via_proc
        with pytest.raises(FileNotFoundError) as e:
            anon.link(fd, gfd, b"x")
        assert e.value.filename == f"/proc/self/fd/{fd}" and e.value.filename2 == b"x"
        assert not anon._via_proc
        anon.link(fd, kfd, b"x")
        assert os.listdir(kept) == ["x"]
        os.close(fd)
    finally:
        os.close(gfd)
        os.close(kfd)
