"""Incremental scans: carry unchanged index entries into a new scan.

A change-tracked pass (ZFS snapshots) records only what changed; every other
indexed path under the volume's roots is marked as seen in the new scan so the
usual queries (candidate sizes, finish_scan) treat the index as a full walk.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update

from dedupd.index import schema as s
from dedupd.index.store import BATCH, Store


def _under(path: bytes, roots: Sequence[bytes]) -> bool:
    return any(path == r or path.startswith(r.rstrip(b"/") + b"/") for r in roots)


def carry_forward(store: Store, scan_id: int, roots: Sequence[bytes], gone: set[bytes],
                  gone_dirs: tuple[bytes, ...] = ()) -> int:
    """Mark paths under roots as seen in scan_id, except gone ones; returns how many.

    Paths in `gone` or below a directory in `gone_dirs` are left unseen, so
    finish_scan forgets them. Inodes that keep a seen path are marked seen too.
    """
    p, i = s.paths.c, s.inodes.c
    keys: list[bytes] = []
    with store.engine.connect() as c:
        q = select(p.path_key, p.path).where(p.seen < scan_id)
        for key, path in c.execution_options(yield_per=5000).execute(q):
            if _under(path, roots) and path not in gone and not _under(path, gone_dirs):
                keys.append(key)
    with store.engine.begin() as c:
        for k in range(0, len(keys), BATCH):
            c.execute(update(s.paths).where(p.path_key.in_(keys[k:k + BATCH]))
                      .values(seen=scan_id))
        seen = select(p.dev).where(p.dev == i.dev, p.ino == i.ino, p.seen == scan_id).exists()
        c.execute(update(s.inodes).where(i.seen < scan_id, seen).values(seen=scan_id))
    return len(keys)
