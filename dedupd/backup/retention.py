"""Retention: local snapshots (keep N) and remote restore points (whole chains only).

Local: only snapshots this job created (prefix + dedupd:job property) are ever
destroyed; held snapshots (the next incremental's base) and the snapshot of an
unfinished backup are never touched. Remote: the newest keep_remote restore
points are kept together with every manifest their chains need; a chain is
deleted only when none of its members is needed, newest member first and each
manifest before its chunks, so a kill mid-prune never leaves a listed restore
point without its data.
"""

from __future__ import annotations

import logging

from dedupd.backup import catalog, snapshots, upload
from dedupd.backup import manifest as mf
from dedupd.backup.manifest import Manifest
from dedupd.backup.targets import Target
from dedupd.config import BackupConfig
from dedupd.index import backups as rows
from dedupd.index.store import Store

log = logging.getLogger("dedupd.backup")


def prune_local(jc: BackupConfig, dry_run: bool, protect: frozenset[int] = frozenset(),
                listed: list[snapshots.Snapshot] | None = None) -> tuple[str, ...]:
    """Destroy this job's snapshots beyond the newest keep_local; returns their names.
    listed: the dataset's snapshots as the caller just listed them (else listed here)."""
    if listed is None:
        listed = snapshots.list_snapshots(jc.dataset)
    owned = [s for s in listed if s.owned_by(jc.name, jc.snapshot_prefix)]
    excess = owned[: max(0, len(owned) - jc.retention.keep_local)]
    gone: list[str] = []
    for s in excess:
        if s.userrefs or s.guid in protect:
            continue  # held: the base of the next incremental (or held by the user)
        if not dry_run:
            snapshots.destroy(s, jc.name, jc.snapshot_prefix)
        gone.append(s.name)
    return tuple(gone)


def chains(ms: list[Manifest]) -> dict[str, list[Manifest]]:
    """Manifests grouped by the id of their chain's full (broken ones under '')."""
    out: dict[str, list[Manifest]] = {}
    for m in ms:
        try:
            root = catalog.root_of(ms, m).id
        except catalog.ChainError:
            root = ""
        out.setdefault(root, []).append(m)
    return out


def remote_plan(ms: list[Manifest], keep: int) -> list[Manifest]:
    """Manifests to delete: members of chains that no kept restore point needs."""
    ms = sorted(ms, key=lambda m: (m.created, m.id))
    kept = ms[-keep:] if keep > 0 else []
    needed: set[str] = set()
    for m in kept:
        try:
            needed.update(x.id for x in catalog.chain(ms, m))
        except catalog.ChainError:
            needed.add(m.id)
    doomed: list[Manifest] = []
    for root, members in chains(ms).items():
        if root == "" or any(x.id in needed for x in members):
            continue  # broken chains are reported, never auto-deleted
        doomed.extend(members)
    return sorted(doomed, key=lambda m: (m.created, m.id), reverse=True)


def prune_remote(target: Target, jc: BackupConfig, store: Store, ms: list[Manifest],
                 dry_run: bool) -> tuple[str, ...]:
    """Apply remote_plan and drop chunk folders no manifest or running attempt owns."""
    doomed = remote_plan(ms, jc.retention.keep_remote)
    for m in doomed:
        if dry_run:
            continue
        target.delete(mf.manifest_key(jc.name, m.id))
        upload.delete_prefix(target, mf.chunk_dir(jc.name, m.id))
        if rows.get(store, m.id) is not None:
            rows.set_state(store, m.id, "deleted")
        log.info("%s: pruned remote restore point %s (%s)", jc.name, m.id, m.snapshot)
    if not dry_run:
        # One listing of the job's folder, after the deletions, answers both
        # questions: which ids have a manifest object (readable or not) and
        # which chunk folders exist (one request or rclone process, not two).
        listing = target.list(f"{jc.name}/")
        mdir = mf.manifest_dir(jc.name)
        listed = {i for o in listing if o.key.startswith(mdir)
                  and (i := mf.id_of_manifest_key(o.key)) is not None}
        chunks = [o.key for o in listing if o.key.startswith(f"{jc.name}/chunks/")]
        _drop_orphans(target, jc, store, listed - {m.id for m in doomed}, chunks)
    return tuple(m.id for m in doomed)


def _drop_orphans(target: Target, jc: BackupConfig, store: Store, listed: set[str],
                  chunk_keys: list[str]) -> None:
    """Chunks of failed or abandoned attempts: no manifest object (readable or not),
    not the unfinished attempt being resumed."""
    running = rows.unfinished(store, jc.name)
    live = listed | ({running.id} if running else set())
    seen: set[str] = set()
    for key in chunk_keys:
        bid = key[len(f"{jc.name}/chunks/"):].split("/", 1)[0]
        if bid in live or bid in seen:
            continue
        seen.add(bid)
        log.info("%s: removing chunks of unfinished backup %s", jc.name, bid)
        upload.delete_prefix(target, mf.chunk_dir(jc.name, bid))
