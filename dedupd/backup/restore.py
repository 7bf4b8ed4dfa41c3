"""Restore: plan the chain, thaw cold objects, download, verify, decompress, receive.

Nothing reaches `zfs receive` unchecked: by default every chunk of the whole
chain is downloaded and its SHA-256 compared first (verify pass, streaming, one
chunk of temp disk); then each chunk is downloaded again, checked again and
only then written into `decompress | zfs receive`. A corrupted chunk therefore
stops the restore before anything is received.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dedupd import proc
from dedupd.backup import catalog, compress, snapshots, streams
from dedupd.backup.chunker import READ_SIZE, Spool
from dedupd.backup.manifest import ChunkRef, Manifest
from dedupd.backup.targets import Target
from dedupd.errors import DedupdError, TemporaryFailure
from dedupd.progress import NO_PROGRESS, Progress

log = logging.getLogger("dedupd.backup")


class CorruptChunk(DedupdError):
    """A downloaded chunk does not match its manifest entry."""


@dataclass(frozen=True)
class RestorePlan:
    point: Manifest
    chain: tuple[Manifest, ...]
    target_dataset: str

    @property
    def total_size(self) -> int:
        return sum(m.total_size for m in self.chain)

    def as_json(self) -> dict[str, object]:
        return {"restore_point": self.point.id, "snapshot": self.point.snapshot,
                "target": self.target_dataset, "total_size": self.total_size,
                "chain": [{"id": m.id, "snapshot": m.snapshot, "full": m.full,
                           "chunks": len(m.chunks), "size": m.total_size}
                          for m in self.chain]}


def plan(target: Target, job: str, at: str | None, target_dataset: str) -> RestorePlan:
    ms = catalog.load(target, job)
    point = catalog.find(ms, at)
    return RestorePlan(point, tuple(catalog.chain(ms, point)), target_dataset)


Report = Callable[[str], None]


def thaw(target: Target, p: RestorePlan, *, wait: bool, poll_seconds: float,
         max_wait: float, days: int, report: Report) -> None:
    """Make every chunk of the chain readable: request all cold ones at once, then poll.

    Resumable: objects already thawing or thawed are not requested again. With
    wait=False, or when max_wait runs out, TemporaryFailure (75) names what is
    still thawing, so a later run (or timer) carries on.
    """
    refs = [c for m in p.chain for c in m.chunks]
    pending = _pending(target, refs, request=True, days=days, report=report)
    deadline = time.monotonic() + max_wait
    while pending:
        report(f"waiting for {len(pending)} of {len(refs)} objects to thaw "
               f"(first: {pending[0].key})")
        if not wait or time.monotonic() >= deadline:
            raise TemporaryFailure(f"{len(pending)} objects are still being restored from "
                                   f"cold storage (first: {pending[0].key}); run the restore "
                                   "again later")
        time.sleep(poll_seconds)
        pending = _pending(target, pending, request=False, days=days, report=report)


def _pending(target: Target, refs: list[ChunkRef], *, request: bool, days: int,
             report: Report) -> list[ChunkRef]:
    out: list[ChunkRef] = []
    asked = 0
    for r in refs:
        info = target.head(r.key)
        if info is None:
            raise DedupdError(f"{r.key}: missing from the target: this restore point is "
                              "damaged")
        if info.readable:
            continue
        if info.restore == "needed" and request:
            target.restore_request(r.key, days)
            asked += 1
        out.append(r)
    if asked:
        report(f"requested restore (thaw) of {asked} cold objects")
    return out


def fetch_verified(target: Target, ref: ChunkRef, spool: Spool) -> IO[bytes]:
    """Download one chunk into the spool and check size + SHA-256; file at offset 0."""
    f = spool.file
    target.get(ref.key, f)
    f.flush()
    f.seek(0)
    h = hashlib.sha256()
    size = 0
    while b := f.read(READ_SIZE):
        h.update(b)
        size += len(b)
    if size != ref.size or h.hexdigest() != ref.sha256:
        raise CorruptChunk(f"{ref.key}: {size} bytes, sha256 {h.hexdigest()}; the manifest "
                           f"says {ref.size} bytes, {ref.sha256}: chunk is corrupt, nothing "
                           "more is received")
    f.seek(0)
    return f


def verify_chain(target: Target, p: RestorePlan, spool: Spool, report: Report,
                 progress: Progress = NO_PROGRESS) -> None:
    n = sum(len(m.chunks) for m in p.chain)
    progress.phase("download+verify", n, p.total_size)
    done = 0
    for m in p.chain:
        for c in m.chunks:
            fetch_verified(target, c, spool)
            done += 1
            progress.advance(1, c.size)
        report(f"verified {done}/{n} chunks ({m.id})")


def receive_argv(target_dataset: str, incremental: bool, force: bool) -> list[str]:
    """-u where zfs has it: a restored (or scratch) dataset is not mounted by the
    receive, so a stream sent with -p cannot mount it over the live original."""
    flags = ["-F"] if incremental or force else []
    if "u" in streams.caps().receive:
        flags.append("-u")
    return ["zfs", "receive", *flags, target_dataset]


def check_resume_token(dataset: str) -> None:
    """A receive interrupted with -s leaves receive_resume_token set, and every
    other receive into that dataset is refused until it is discarded."""
    r = proc.run(["zfs", "get", "-H", "-o", "value", "receive_resume_token", dataset],
                 check=False, timeout=60)
    token = r.text.strip()
    if r.returncode == 0 and token not in ("", "-"):
        raise DedupdError(f"{dataset} holds a partly received stream (its "
                          "receive_resume_token is set), which blocks any other receive; "
                          f"discard it with `zfs receive -A {dataset}`, then restore again")


def receive_one(target: Target, m: Manifest, target_dataset: str, spool: Spool,
                progress: Progress = NO_PROGRESS) -> None:
    """Replay one stream: verified chunks -> decompressor -> zfs receive."""
    stages: list[list[str]] = []
    dec = compress.decompress_argv(m.compression)
    if dec:
        stages.append(dec)
    stages.append(receive_argv(target_dataset, not m.full, False))
    pipe = compress.Pipeline(stages, stdin=subprocess.PIPE)
    sink = pipe.procs[0].stdin
    assert sink is not None
    try:
        for c in m.chunks:
            f = fetch_verified(target, c, spool)
            while b := f.read(READ_SIZE):
                sink.write(b)
            progress.advance(1, c.size)
        sink.close()
    except BrokenPipeError:
        # zfs receive (or the decompressor) quit early: its own error says why.
        pipe.close(timeout=None)
        raise DedupdError(f"zfs receive of {m.id} stopped reading its stream") from None
    except BaseException:
        pipe.kill()  # zfs discards a partially received stream
        raise
    pipe.close(timeout=None)


def already_received(p: RestorePlan) -> int:
    """How many streams of the chain an existing target already holds.

    The target continues the chain when its newest snapshot is chain[k]'s (by
    GUID) and chain[0..k] are all there: a restore interrupted between streams,
    or an older restore point being brought forward. 0 otherwise.
    """
    if not snapshots.dataset_exists(p.target_dataset):
        return 0
    snaps = snapshots.list_snapshots(p.target_dataset)
    if not snaps:
        return 0
    have = {s.guid for s in snaps}
    newest = snaps[-1].guid
    for k, m in enumerate(p.chain):
        if m.snapshot_guid == newest:
            return k + 1 if all(x.snapshot_guid in have for x in p.chain[: k + 1]) else 0
    return 0


def run(target: Target, p: RestorePlan, *, verify_first: bool, force: bool,
        spool_dir: Path | None, report: Report, progress: Progress = NO_PROGRESS) -> None:
    """Receive the chain into p.target_dataset (which must not exist unless force).

    A target that already holds the start of the chain (already_received) only
    gets the missing incrementals (-F rolls back changes made since its newest
    snapshot). Any other existing target (force: the user confirmed overwriting
    it) is destroyed only after every chunk of the chain has been downloaded and
    verified, right before the receive. (A receive into a sibling plus `zfs
    rename` would keep it until the end, but zfs-fuse cannot rename datasets.)
    """
    exists = snapshots.dataset_exists(p.target_dataset)
    if exists and not force:
        raise DedupdError(f"{p.target_dataset} exists; restore into a new dataset, or "
                          "confirm overwriting it")
    if exists:
        check_resume_token(p.target_dataset)
    done = already_received(p) if exists else 0
    todo = p.chain[done:]
    if done:
        report(f"{p.target_dataset} already holds {p.chain[done - 1].snapshot} "
               f"({done} of {len(p.chain)} streams); receiving the rest")
    if done == len(p.chain):
        # Already at that point: only undo whatever changed since (confirmed).
        snapshots.rollback_to_newest(p.target_dataset)
        return
    with Spool(spool_dir) as sp:
        if verify_first or (exists and not done):
            verify_chain(target, RestorePlan(p.point, todo, p.target_dataset), sp, report,
                         progress)
        if exists and not done:
            report(f"destroying {p.target_dataset} to receive the restore in its place")
            # Restoring onto the job's own dataset: its base hold would block the destroy.
            for s in snapshots.list_snapshots(p.target_dataset):
                if s.userrefs:
                    snapshots.release(s)
            snapshots.destroy_confirmed(p.target_dataset)
        progress.phase("receive", sum(len(m.chunks) for m in todo),
                       sum(m.total_size for m in todo))
        for m in todo:
            report(f"receiving {m.snapshot} ({'full' if m.full else 'incremental'}, "
                   f"{len(m.chunks)} chunks) into {p.target_dataset}")
            try:
                receive_one(target, m, p.target_dataset, sp, progress)
            except proc.ProcError as e:
                raise DedupdError(f"zfs receive of {m.id} failed: {e}") from None
    if "u" in streams.caps().receive and not exists:
        report(f"{p.target_dataset} was received unmounted (zfs receive -u); mount it with "
               f"`zfs mount {p.target_dataset}`")
