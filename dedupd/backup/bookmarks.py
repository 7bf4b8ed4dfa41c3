"""Bookmarks as the next incremental's source, where the pool has them (OpenZFS).

A held base snapshot pins every block freed since it was taken. A bookmark
(`<dataset>#<snapshot name>`) records only the snapshot's GUID and txg, pins
nothing, and is a valid `zfs send -i` source; with one, the job needs no hold
and retention may destroy the snapshot like any other. A raw (`-w`) chain
also needs the pool's `bookmark_v2` feature (the bookmark then keeps the
encryption IV set the raw incremental is checked against).

Ownership: a bookmark is this job's when its name starts with the job's
snapshot prefix and its GUID is that of a snapshot this job uploaded; only
such bookmarks are ever destroyed here.
"""

from __future__ import annotations

from dedupd import proc, testpoints
from dedupd.backup import streams
from dedupd.backup.snapshots import Snapshot

_PROPS = ("guid", "createtxg", "creation")


def supported(dataset: str, raw: bool) -> bool:
    """Whether a bookmark of this dataset can be the next incremental's source."""
    if not streams.caps().bookmarks:
        return False
    if not raw:
        return True
    pool = dataset.split("/", 1)[0]
    r = proc.run(["zpool", "get", "-H", "-o", "value", "feature@bookmark_v2", pool],
                 check=False, timeout=60)
    return r.returncode == 0 and r.text.strip() in ("enabled", "active")


def list_bookmarks(dataset: str) -> list[Snapshot]:
    """Bookmarks of dataset itself, oldest first (as Snapshot values: '#' names)."""
    r = proc.run(["zfs", "get", "-Hp", "-r", "-d", "1", "-t", "bookmark", "-o",
                  "name,property,value", ",".join(_PROPS), dataset], check=False, timeout=120)
    if r.returncode != 0:
        return []
    props: dict[str, dict[str, str]] = {}
    for line in r.text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].startswith(dataset + "#"):
            props.setdefault(parts[0], {})[parts[1]] = parts[2]
    out = [Snapshot(name=n, guid=int(p["guid"]), createtxg=int(p["createtxg"]),
                    creation=int(p.get("creation", "0")), job=None, userrefs=0)
           for n, p in props.items() if "guid" in p and "createtxg" in p]
    return sorted(out, key=lambda b: b.createtxg)


def create(snap: Snapshot) -> Snapshot | None:
    """Bookmark snap as <dataset>#<its name>; None when zfs refuses (the caller
    holds the snapshot instead). Idempotent.

    Snapshot names carry the second: a snapshot taken in the second of an older
    one that was destroyed gets that one's name, and its bookmark's name is then
    taken by another GUID. It is bookmarked as <name>-2 (-3, ...) instead: bases
    are found by GUID and ownership by prefix and GUID, never by the full name."""
    testpoints.at("bookmark", snap.name.encode())
    for n in range(1, 10):
        name = f"{snap.dataset}#{snap.short}" + (f"-{n}" if n > 1 else "")
        r = proc.run(["zfs", "bookmark", snap.name, name], check=False, timeout=60)
        if r.returncode != 0 and "exists" not in r.stderr:
            return None
        found = [b for b in list_bookmarks(snap.dataset) if b.name == name]
        if not found:
            return None
        if found[0].guid == snap.guid:
            return found[0]
    return None


def prune(dataset: str, prefix: str, keep_guid: int, uploaded: set[int]) -> list[str]:
    """Destroy this job's bookmarks other than keep_guid's; returns their names."""
    gone = []
    for b in list_bookmarks(dataset):
        if b.short.startswith(prefix) and b.guid != keep_guid and b.guid in uploaded:
            proc.run(["zfs", "destroy", b.name], timeout=120)
            gone.append(b.name)
    return gone
