"""pathtrust.bent_by: the first directory on the way to a path another user may change."""

from __future__ import annotations

import os
from pathlib import Path

from dedupd.pathtrust import bent_by

OTHER = 4242


def b(p: Path) -> bytes:
    return os.fsencode(p)


def test_root_only_ways_and_the_ways_others_may_bend(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "root" / "a").mkdir(parents=True)
    assert bent_by(b(tmp_path / "root" / "a")) is None
    assert bent_by(b(tmp_path / "root" / "missing" / "x")) is None  # nothing to bend yet
    theirs = tmp_path / "theirs"
    (theirs / "a").mkdir(parents=True)
    os.chown(theirs, OTHER, OTHER)
    assert bent_by(b(theirs / "a")) == b(theirs)
    group = tmp_path / "group"
    (group / "a").mkdir(parents=True)
    group.chmod(0o775)
    assert bent_by(b(group / "a")) == b(group)
    sticky = tmp_path / "sticky"
    (sticky / "mine").mkdir(parents=True)
    (sticky / "yours").mkdir()
    sticky.chmod(0o1777)
    os.chown(sticky / "yours", OTHER, OTHER)
    assert bent_by(b(sticky / "mine")) is None  # as /tmp/x of root's
    assert bent_by(b(sticky / "yours" / "x")) == b(sticky)


def test_symlinks_on_the_way_are_checked_where_they_lead(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    theirs = tmp_path / "theirs"
    (theirs / "d").mkdir(parents=True)
    os.chown(theirs, OTHER, OTHER)
    (tmp_path / "ok").mkdir()
    (tmp_path / "abs").symlink_to(theirs / "d")
    (tmp_path / "ok" / "rel").symlink_to("../theirs/d")
    (tmp_path / "fine").symlink_to("ok")
    assert bent_by(b(tmp_path / "abs" / "x")) == b(theirs)
    assert bent_by(b(tmp_path / "ok" / "rel")) == b(theirs)
    assert bent_by(b(tmp_path / "fine")) is None
    (tmp_path / "loop").symlink_to("loop")
    assert bent_by(b(tmp_path / "loop")) == b(tmp_path / "loop")
