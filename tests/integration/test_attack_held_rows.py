"""A scan holds new inode rows, and the listing digests of their directories, a few
record batches in memory (index/held.py) so that their hashes go in with them. A
file the hasher then finds gone is forgotten (Store.forget: its name and row, and
the digests of its filesystem, so that the next walk lists its directory again).
A real unprivileged user moves their directory away while the scan reads it and
puts it back once the scan is done: the directory lists exactly as the scan saw
it, so the digest stored for it must not outlive the forgetting, or every later
rescan skips it and never indexes the forgotten file again."""

from __future__ import annotations

from pathlib import Path

import pytest

from dedupd import testpoints
from tests.fixtures.attacker import User, reachable
from tests.integration.test_attack_rescan import blob, check, put, reported, run_scan, truth

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("feeders", [0, 2])
def test_a_file_forgotten_while_its_directory_digest_is_held_is_listed_again(
        tmp_path: Path, attacker: User, monkeypatch: pytest.MonkeyPatch, feeders: int) -> None:
    from dedupd.scan import prehash

    monkeypatch.setattr(prehash, "FEED_PROCS", feeders)  # in a thread here, or forked
    root, db, away = tmp_path / "t", tmp_path / "db", tmp_path / "away"
    d = root / "atk" / "d"
    put(d / "a", blob("x"))
    put(root / "e" / "a", blob("x"))  # root's copy of the attacker's bytes
    put(root / "e" / "b", blob("y"))
    away.mkdir()
    attacker.owns(root / "atk", d, d / "a", away)
    reachable(d)
    reachable(away)
    fired = tmp_path / "fired"  # the hook may run in a forked feeder

    def moved_away(_point: str, path: bytes) -> None:
        if path.startswith(bytes(d) + b"/") and not fired.exists():
            fired.write_bytes(path)
            attacker.run('mv "$1" "$2/"', str(d), str(away))

    with testpoints.acting(("read.open",), moved_away):
        rep = run_scan(root, db)
    assert fired.exists() and rep.stats["files_forgotten"] + len(rep.problems) >= 1, rep.stats
    attacker.run('mv "$1/d" "$2/"', str(away), str(root / "atk"))  # back, as it was
    assert truth(root) == {frozenset({bytes(d / "a"), bytes(root / "e" / "a")})}
    again = check(root, db)  # reports the disk, every indexed row the disk's
    assert reported(again) == truth(root)
