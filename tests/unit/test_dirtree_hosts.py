"""DirTree is one host's tree: another host's directory id is refused, and asking
for one must not poison the cache (that host's "/" and "/srv" cached as ours: a
lookup, a subtree or an fs update would then act on the other host's rows).
A real SQLite index shared by two hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dedupd.files.fsid import HostIdentity
from dedupd.index.db import IndexError_
from dedupd.index.store import Store

NAS1, NAS2 = HostIdentity("nas1", "m-a"), HostIdentity("nas2", "m-b")


def _tree(url: str, host: HostIdentity, path: bytes) -> tuple[int, int, int]:
    """(root id, /srv id, id of path) in host's tree, path created."""
    s = Store(url, host)
    try:
        with s.db.tx() as cur:
            leaf = s.dirs.ensure(cur, path, 0)
        root, srv = s.dirs.find(b"/"), s.dirs.find(b"/srv")
        assert root is not None and srv is not None
        return root, srv, leaf
    finally:
        s.close()


def test_a_foreign_directory_id_is_refused_and_leaves_the_cache_intact(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/i.db"
    _, _, theirs = _tree(url, NAS2, b"/srv/theirs")
    root, srv, ours = _tree(url, NAS1, b"/srv/ours")
    a = Store(url, NAS1)  # a fresh cache, as in a later process
    try:
        with pytest.raises(IndexError_, match=f"directory id {theirs} belongs to host"):
            a.dirs.paths([theirs])
        assert (a.dirs.find(b"/"), a.dirs.find(b"/srv")) == (root, srv)
        assert {i for i, _fs in a.dirs.subtree([b"/"])} == {root, srv, ours}
        assert a.dirs.paths([ours]) == {ours: b"/srv/ours"}
    finally:
        a.close()
