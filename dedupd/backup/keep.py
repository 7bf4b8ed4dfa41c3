"""After a backup is committed, on the pool: keep its snapshot as the next base, prune.

The next incremental's source is kept by a bookmark where the pool has them
(then nothing is held and retention may destroy the snapshot), else by a hold
on the snapshot. Older holds (and bookmarks) of this job go, then the local
retention destroys this job's snapshots beyond keep_local (retention.py).

Every step is a zfs command, and on zfs-fuse each one that changes the pool
waits for a transaction group to be written (~10-30 ms). Two of them run side
by side: the new snapshot's hold and the listing that finds the older holds
(they touch different snapshots; the new one is the newest of the job, which
the local retention never destroys, keep_local being at least 1). The
listing, with the holds this run released counted out, also serves the
local retention, which would otherwise list again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from dedupd.backup import bookmarks, retention, snapshots
from dedupd.backup.manifest import Manifest
from dedupd.backup.snapshots import Snapshot
from dedupd.config import BackupConfig

log = logging.getLogger("dedupd.backup")


def keep_and_prune(jc: BackupConfig, snap: Snapshot, m: Manifest, ms: list[Manifest]
                   ) -> tuple[str, ...]:
    """Keep snap (just committed as m; ms: the manifests before it) as the next base,
    then prune the job's local snapshots; returns the names destroyed."""
    bm = None
    if bookmarks.supported(jc.dataset, "-w" in m.send_flags):
        bm = bookmarks.create(snap)
        if bm is None:
            log.info("%s: could not bookmark %s; holding it instead", jc.name, snap.name)
    if bm is None:
        listed = _hold_while_listing(snap)
    else:
        uploaded = {x.snapshot_guid for x in ms} | {snap.guid}
        bookmarks.prune(jc.dataset, jc.snapshot_prefix, snap.guid, uploaded)
        listed = snapshots.list_snapshots(jc.dataset)
    after: list[Snapshot] = []
    for s in listed:
        if (s.guid != snap.guid or bm is not None) and s.userrefs \
                and s.owned_by(jc.name, jc.snapshot_prefix) and snapshots.release(s):
            s = replace(s, userrefs=s.userrefs - 1)
        after.append(s)
    return retention.prune_local(jc, dry_run=False, protect=frozenset({snap.guid}),
                                 listed=after)


def _hold_while_listing(snap: Snapshot) -> list[Snapshot]:
    """Hold snap and, meanwhile, list its dataset's snapshots (raises either's error)."""
    failed: list[BaseException] = []

    def hold() -> None:
        try:
            snapshots.hold(snap)
        except BaseException as e:  # raised below, in the caller's thread
            failed.append(e)

    t = threading.Thread(target=hold, name="dedupd-hold", daemon=True)
    t.start()
    try:
        listed = snapshots.list_snapshots(snap.dataset)
    finally:
        t.join()
    if failed:
        raise failed[0]
    return listed
