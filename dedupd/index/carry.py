"""Incremental scans: carry unchanged index entries into a new scan.

A change-tracked pass (ZFS snapshots) records only what changed; every other
indexed name under the volume's roots is marked as seen in the new scan so the
usual queries (candidate sizes, finish_scan) treat the index as a full walk.
"""

from __future__ import annotations

from collections.abc import Sequence

from dedupd.index.store import Store, chunks


def carry_forward(store: Store, scan_id: int, roots: Sequence[bytes], gone: set[bytes],
                  gone_dirs: tuple[bytes, ...] = ()) -> int:
    """Mark names under roots as seen in scan_id, except gone ones; returns how many.

    Names in `gone` or below a directory in `gone_dirs` are left unseen, so
    finish_scan forgets them. Inodes that keep a seen name are marked seen too.
    """
    dead = {d for d, _fs in store.dirs.subtree(gone_dirs)}
    live = [d for d, _fs in store.dirs.subtree(roots) if d not in dead]
    p, n = store.db.p, 0
    with store.db.tx() as cur:
        for part in chunks(live, 500):
            cur.execute(f"UPDATE entries SET seen = {p} WHERE seen < {p} AND dir IN "
                        f"({store.db.marks(len(part))})", (scan_id, scan_id, *part))
            n += max(int(cur.rowcount or 0), 0)
    n -= store.unsee(scan_id, sorted(gone))
    store.mark_inodes_seen(scan_id)
    return n
