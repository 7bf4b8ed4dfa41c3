"""The runtime directory and the pid file are never reached through a symlink or
taken over from another user (docs/safety.md, "Control socket and runtime
directory")."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dedupd.errors import EXIT_CONFIG, ConfigError, DedupdError
from dedupd.runtime import PidLock, prepare_runtime_dir

REPO = Path(__file__).resolve().parents[2]
OTHER = 65534  # nobody


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory and a file that must come out of every test untouched."""
    d = tmp_path / "victim"
    d.mkdir(mode=0o700)
    (d / "secret").write_text("s")
    os.chmod(d / "secret", 0o600)
    return d


def shape(p: Path) -> tuple[int, int, int, int]:
    st = os.lstat(p)
    return st.st_mode, st.st_uid, st.st_gid, st.st_nlink


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown to another uid)")


def test_fresh_runtime_dir(tmp_path: Path) -> None:
    d = tmp_path / "run" / "dedupd"
    prepare_runtime_dir(d, "no-such-group-here")
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode) and st.st_mode & 0o777 == 0o750
    assert st.st_uid == os.geteuid()
    prepare_runtime_dir(d, "no-such-group-here")  # an existing good one is kept


def test_symlinked_runtime_dir_is_refused(tmp_path: Path, victim: Path) -> None:
    before = shape(victim)
    link = tmp_path / "run"
    link.symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link") as e:
        prepare_runtime_dir(link, "root", "dedupd.toml")
    assert e.value.exit_code == EXIT_CONFIG and "runtime_dir" in str(e.value)
    assert shape(victim) == before  # no chmod/chown went through the link


def test_runtime_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    need_root()
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, 0o777)
    os.chown(d, OTHER, OTHER)
    with pytest.raises(ConfigError, match=f"owned by uid {OTHER}"):
        prepare_runtime_dir(d, "root")
    assert shape(d)[1] == OTHER and shape(d)[0] & 0o777 == 0o777


def test_runtime_dir_in_a_directory_others_may_change(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # world-writable, not sticky: anyone may rename run/ away
    with pytest.raises(ConfigError, match="may be changed by other users"):
        prepare_runtime_dir(shared / "run", "root")
    assert not (shared / "run").exists()
    os.chmod(shared, 0o1777)  # sticky, as /tmp: entries of others are safe
    prepare_runtime_dir(shared / "run", "root")
    assert shape(shared / "run")[0] & 0o777 == 0o750


def test_pid_file_symlink_is_refused(tmp_path: Path, victim: Path) -> None:
    before, content = shape(victim / "secret"), (victim / "secret").read_text()
    pid = tmp_path / "dedupd.pid"
    pid.symlink_to(victim / "secret")
    with pytest.raises(DedupdError, match="symbolic link"):
        PidLock(pid).acquire()
    assert shape(victim / "secret") == before and (victim / "secret").read_text() == content
    dangling = tmp_path / "d.pid"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(DedupdError, match="symbolic link"):
        PidLock(dangling).acquire()
    assert not (tmp_path / "would-be-created").exists()


def test_pid_file_that_is_not_ours_is_refused(tmp_path: Path, victim: Path) -> None:
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    with pytest.raises(DedupdError, match="not a regular file"):  # and no hang on open
        PidLock(fifo).acquire()
    hard = tmp_path / "hard.pid"
    os.link(victim / "secret", hard)
    with pytest.raises(DedupdError, match="one name"):
        PidLock(hard).acquire()
    assert (victim / "secret").read_text() == "s"
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs.pid"
        theirs.write_text("")
        os.chown(theirs, OTHER, OTHER)
        with pytest.raises(DedupdError, match="not a regular file of uid"):
            PidLock(theirs).acquire()


def test_pid_file_release_removes_only_its_own_file(tmp_path: Path) -> None:
    pid = tmp_path / "dedupd.pid"
    lock = PidLock(pid)
    lock.acquire()
    assert pid.read_text() == f"{os.getpid()}\n"
    os.rename(pid, tmp_path / "moved")
    pid.write_text("someone else's\n")
    lock.release()
    assert pid.read_text() == "someone else's\n"
    lock2 = PidLock(tmp_path / "again.pid")
    lock2.acquire()
    lock2.release()
    assert not (tmp_path / "again.pid").exists()


def test_fd_limit_raised() -> None:
    import resource

    from dedupd.runtime import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        now = raise_fd_limit()
        assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert now >= min(hard, 65536)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_daemon_refuses_a_symlinked_runtime_dir(tmp_path: Path, victim: Path) -> None:
    before = shape(victim)
    link = tmp_path / "run"
    link.symlink_to(victim)
    cfg = tmp_path / "dedupd.toml"
    cfg.write_text(f'[daemon]\nruntime_dir = "{link}"\n[database]\n'
                   f'url = "sqlite:///{tmp_path}/db.sqlite"\n')
    r = subprocess.run([sys.executable, "-m", "dedupd", "run", "-c", str(cfg)], cwd=REPO,
                       capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert r.stderr.startswith("dedupd: error: ") and "symbolic link" in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert shape(victim) == before and os.listdir(victim) == ["secret"]
