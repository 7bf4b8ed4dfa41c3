"""The scan's warm first reads (hashing.read.read_warm, then read_many for what it
leaves) against a real unprivileged user who owns the directory of root's files and
swaps them between the walk and the read: a FIFO in a name's place must be neither
waited on (an open without O_NONBLOCK blocks until a writer comes) nor hashed, a
symlink to a file only root may read must not be followed, and names with a newline
or bytes that are not UTF-8 are read like any other."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dedupd import testpoints
from dedupd.hashing import Feeder, Stability
from dedupd.index.store import IndexedFile
from tests.fixtures.attacker import User, reachable

pytestmark = pytest.mark.integration


def indexed(p: Path) -> IndexedFile:
    st = os.lstat(p)
    return IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                       None, None, 0, (os.fsencode(p),))


def test_names_swapped_by_a_user_before_the_warm_read(tmp_path: Path, attacker: User) -> None:
    d = tmp_path / "user"
    d.mkdir()
    attacker.owns(d)
    reachable(d)
    secret = tmp_path / "secret"
    data = os.urandom(6000)
    secret.write_bytes(data)  # root's, 0600: the same bytes as the others
    secret.chmod(0o600)
    names = [b"a", b"fifo", b"link", b"new\nline", b"not-utf8-\xff"]
    paths = [os.path.join(os.fsencode(d), n) for n in names]
    for p in paths:
        with open(p, "wb") as f:
            f.write(data)
    files = [indexed(Path(os.fsdecode(p))) for p in paths]
    swaps = {paths[1]: 'rm -f "$1" && mkfifo "$1"',
             paths[2]: 'rm -f "$1" && ln -s "$2" "$1"'}

    def swap(_point: str, path: bytes) -> None:
        script = swaps.pop(path, None)
        if script is not None:
            attacker.run(script, os.fsdecode(path), str(secret))

    feeder = Feeder(Stability(), 100)
    out: list[object] = []

    def read() -> None:
        with testpoints.acting(("read.open",), swap):
            out.append(feeder.put(files))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "a read waited on the user's FIFO"
    assert not swaps  # both swaps happened before the reads
    [group] = feeder.groups()
    assert sorted(f.path for f in group.files) == sorted([paths[0], paths[3], paths[4]])
    assert sorted((p.path, p.reason) for p in feeder.stats.problems) == [
        (paths[1], "changed"), (paths[2], "path_changed")]
