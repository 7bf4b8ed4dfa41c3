"""ZFS snapshots of a backup job: create, list, hold, release, destroy.

Ownership rule: a snapshot is dedupd's to destroy only when its name starts with
the job's prefix AND its user property `dedupd:job` names the job. Anything else
(a user's snapshot, another tool's, another job's) is never destroyed here.

Works on OpenZFS and on zfs-fuse (pool v23). zfs-fuse lacks `zfs version`,
`send -w`, parsable `zfs list -p` and resume tokens, so every read goes through
`zfs get -Hp`, which both understand (what else differs: streams.py).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from dedupd import proc
from dedupd.errors import DedupdError

JOB_PROPERTY = "dedupd:job"
_SEP = re.compile("[@#]")
HOLD_TAG = "dedupd-base"
_PROPS = ("guid", "createtxg", "creation", JOB_PROPERTY, "userrefs")


class SnapshotError(DedupdError):
    """A snapshot operation was refused or failed."""


@dataclass(frozen=True)
class Snapshot:
    name: str  # pool/ds@snap
    guid: int
    createtxg: int
    creation: int  # seconds since the epoch
    job: str | None  # the dedupd:job property, None when unset
    userrefs: int  # holds

    @property
    def dataset(self) -> str:
        return _SEP.split(self.name, maxsplit=1)[0]

    @property
    def short(self) -> str:
        """The name after '@' (or after '#' for a bookmark, bookmarks.py)."""
        return _SEP.split(self.name, maxsplit=1)[1]

    def owned_by(self, job: str, prefix: str) -> bool:
        return self.job == job and self.short.startswith(prefix)


def list_snapshots(dataset: str) -> list[Snapshot]:
    """Snapshots of `dataset` itself (not its children), oldest first (by createtxg)."""
    r = proc.run(["zfs", "get", "-Hp", "-r", "-d", "1", "-o", "name,property,value,source",
                  ",".join(_PROPS), dataset], timeout=120)
    props: dict[str, dict[str, str]] = {}
    for line in r.text.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or not parts[0].startswith(dataset + "@"):
            continue
        props.setdefault(parts[0], {})[parts[1]] = _own(parts[1], parts[2], parts[3])
    snaps = [_snapshot(n, p) for n, p in props.items()]
    return sorted(snaps, key=lambda x: x.createtxg)


def _own(prop: str, value: str, source: str) -> str:
    """The ownership mark counts only where it was set on the snapshot itself: a
    dedupd:job set on the dataset is inherited by every snapshot, a user's too."""
    return value if prop != JOB_PROPERTY or source == "local" else "-"


def _snapshot(name: str, p: dict[str, str]) -> Snapshot:
    job = p.get(JOB_PROPERTY, "-")
    refs = p.get("userrefs", "0")
    return Snapshot(name=name, guid=int(p["guid"]), createtxg=int(p["createtxg"]),
                    creation=int(p["creation"]), job=None if job == "-" else job,
                    userrefs=int(refs) if refs.isdigit() else 0)


def get(name: str) -> Snapshot | None:
    """One snapshot by full name, None when it does not exist."""
    r = proc.run(["zfs", "get", "-Hp", "-o", "name,property,value,source", ",".join(_PROPS),
                  name], check=False, timeout=60)
    if r.returncode != 0:
        return None
    p = {parts[1]: _own(parts[1], parts[2], parts[3])
         for parts in (ln.split("\t") for ln in r.text.splitlines()) if len(parts) == 4}
    return _snapshot(name, p) if "guid" in p else None


def by_guid(dataset: str, guid: int) -> Snapshot | None:
    return next((s for s in list_snapshots(dataset) if s.guid == guid), None)


def dataset_exists(name: str) -> bool:
    return proc.run(["zfs", "get", "-H", "-o", "value", "type", name], check=False,
                    timeout=60).returncode == 0


def new_name(dataset: str, prefix: str) -> str:
    """<dataset>@<prefix><UTC timestamp>, with a -N suffix if that name is taken."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    taken = {s.short for s in list_snapshots(dataset)}
    short, n = f"{prefix}{stamp}", 1
    while short in taken:
        n += 1
        short = f"{prefix}{stamp}-{n}"
    return f"{dataset}@{short}"


def create(dataset: str, prefix: str, job: str) -> Snapshot:
    """Take a snapshot tagged with dedupd:job=<job> (the ownership mark), atomically.

    The plain timestamped name is tried first: zfs refuses a name that exists,
    and only then are the snapshots listed for a free -N name (new_name), a
    listing (a process, ~15 ms) that a run otherwise spends before its stream.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"{dataset}@{prefix}{stamp}"
    argv = ["zfs", "snapshot", "-o", f"{JOB_PROPERTY}={job}"]
    r = proc.run([*argv, name], timeout=120, check=False)
    if r.returncode != 0:
        if "already exists" not in r.stderr:
            raise proc.ProcError(r.argv, r.returncode, r.stderr)
        name = new_name(dataset, prefix)
        proc.run([*argv, name], timeout=120)
    snap = get(name)
    if snap is None:
        raise SnapshotError(f"{name}: created but cannot be read back")
    return snap


def hold(snap: Snapshot, tag: str = HOLD_TAG) -> None:
    """Idempotent: a hold that already exists is not an error."""
    r = proc.run(["zfs", "hold", tag, snap.name], check=False, timeout=60)
    if r.returncode != 0 and "tag already exists" not in r.stderr:
        raise SnapshotError(f"zfs hold {tag} {snap.name}: {r.stderr.strip()}")


def release(snap: Snapshot, tag: str = HOLD_TAG) -> bool:
    """Idempotent: releasing a hold that is not there is not an error. True when
    this call released it (the snapshot has one hold less)."""
    r = proc.run(["zfs", "release", tag, snap.name], check=False, timeout=60)
    if r.returncode != 0 and "no such tag" not in r.stderr and get(snap.name) is not None:
        raise SnapshotError(f"zfs release {tag} {snap.name}: {r.stderr.strip()}")
    return r.returncode == 0


def destroy(snap: Snapshot, job: str, prefix: str) -> None:
    """Destroy a snapshot this job owns; refuses any other (SnapshotError).

    The ownership is re-read from ZFS right before the destroy so a stale
    Snapshot value cannot make us destroy a snapshot that was replaced.
    """
    fresh = get(snap.name)
    if fresh is None:
        return
    if fresh.guid != snap.guid or not fresh.owned_by(job, prefix):
        raise SnapshotError(f"{snap.name}: not created by dedupd job {job!r}; refusing to "
                            "destroy it")
    _destroy(fresh.name, [])


def _destroy(name: str, flags: list[str], tries: int = 6) -> None:
    """`zfs destroy`, retried while zfs says "busy": zfs-fuse reports a dataset (or
    a snapshot a killed `zfs send -p` just read) busy for a moment afterwards."""
    for attempt in range(tries):
        r = proc.run(["zfs", "destroy", *flags, name], timeout=600, check=False)
        if r.returncode == 0:
            return
        if "busy" not in r.stderr or attempt == tries - 1:
            raise SnapshotError(f"zfs destroy {' '.join([*flags, name])}: {r.stderr.strip()}")
        time.sleep(0.5 * (attempt + 1))


def destroy_scratch(dataset: str) -> None:
    """Destroy a dataset (and its snapshots) that a test restore just created.

    The caller checked it did not exist before the restore: it holds nothing
    but what the restore received.
    """
    _destroy_tree(dataset)


def rollback_to_newest(dataset: str) -> None:
    """Undo changes made since the dataset's newest snapshot (a confirmed restore)."""
    snaps = list_snapshots(dataset)
    if snaps:
        proc.run(["zfs", "rollback", snaps[-1].name], timeout=600)


def destroy_confirmed(dataset: str) -> None:
    """Destroy a restore target the user confirmed may be overwritten (restore --yes)."""
    _destroy_tree(dataset)


def _destroy_tree(dataset: str) -> None:
    _destroy(dataset, ["-r", "-f"])
