"""One run of a backup job: snapshot, send, upload, manifest, hold (or bookmark), prune.

Order of commitment: chunks first, each confirmed by HEAD; the manifest last
(the commit marker); only then the index says "complete" and the new snapshot
is kept as the next incremental's base: bookmarked where the pool has
bookmarks (bookmarks.py), else held. A kill at any point leaves either a
complete backup or an unfinished attempt that the next run resumes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from dedupd.backup import bookmarks, catalog, keep, retention, snapshots, streams, upload
from dedupd.backup import manifest as mf
from dedupd.backup.manifest import Manifest
from dedupd.backup.send import SendSpec
from dedupd.backup.snapshots import Snapshot
from dedupd.backup.start import Ahead, job_lock, resolve
from dedupd.backup.targets import Target, make_target
from dedupd.config import BackupConfig, Config
from dedupd.errors import DedupdError, TemporaryFailure
from dedupd.index import backups as rows
from dedupd.index.store import Store

log = logging.getLogger("dedupd.backup")


@dataclass(frozen=True)
class BackupResult:
    job: str
    dry_run: bool
    id: str | None
    snapshot: str
    base_snapshot: str | None
    resumed: bool = False
    chunks: int = 0
    uploaded: int = 0
    skipped: int = 0
    total_size: int = 0
    seconds: float = 0.0
    upload_seconds: float = 0.0  # in requests to the target (overlaps the stream)
    stream_seconds: float = 0.0  # send | compress | chunk | upload, without fixed costs
    # Where the overlapped pipeline waited: the stream for uploads (upload-bound),
    # the uploader for a complete chunk (stream-bound).
    stream_waited: float = 0.0
    upload_waited: float = 0.0
    overlapped: int = 0  # stream bytes spooled while the previous chunk was uploading
    restarts: int = 0  # stream regenerations after an upload lost its spooled body
    streamed: int = 0  # chunks sent live as the stream was read (rclone targets)
    pruned_local: tuple[str, ...] = ()
    pruned_remote: tuple[str, ...] = ()

    @property
    def full(self) -> bool:
        return self.base_snapshot is None

    def as_json(self) -> dict[str, Any]:
        return {"job": self.job, "dry_run": self.dry_run, "id": self.id,
                "snapshot": self.snapshot, "base_snapshot": self.base_snapshot,
                "full": self.full, "resumed": self.resumed, "chunks": self.chunks,
                "uploaded": self.uploaded, "skipped": self.skipped,
                "total_size": self.total_size, "seconds": round(self.seconds, 3),
                "upload_seconds": round(self.upload_seconds, 3),
                "stream_seconds": round(self.stream_seconds, 3),
                "stream_waited_seconds": round(self.stream_waited, 3),
                "upload_waited_seconds": round(self.upload_waited, 3),
                "overlapped_bytes": self.overlapped, "restarts": self.restarts,
                "streamed": self.streamed,
                "pruned_local": list(self.pruned_local),
                "pruned_remote": list(self.pruned_remote)}


@dataclass
class Hooks:
    """Callbacks: after_chunk(seq) runs after each chunk is uploaded (a test seam);
    progress(chunks, bytes) adds to what is uploaded (the progress display)."""

    after_chunk: Callable[[int], None] | None = None
    progress: Callable[[int, int], None] | None = None


def run_job(cfg: Config, job: str | BackupConfig, store: Store, dry_run: bool = False,
            full: bool = False, *, target: Target | None = None,
            hooks: Hooks | None = None, probe: Future[streams.Wanted] | None = None,
            ahead: Ahead | None = None) -> BackupResult:
    """Run one backup of `job`: resume an unfinished attempt or take a new snapshot.

    Blocking (subprocesses, boto3): the daemon calls it from a worker thread.
    Raises TemporaryFailure (75) when the target stays unreachable after retries.
    probe: the job's zfs probes already started (start.py), else they start here.
    ahead: the new snapshot, taken by the caller under the job lock it holds
    (start.py); a run that resumes an attempt instead destroys it.
    """
    jc = resolve(cfg, job)
    tgt = target or make_target(jc.target)
    if ahead is not None:
        return _Run(jc, store, tgt, hooks or Hooks(), probe, ahead).run(dry_run, full)
    with job_lock(cfg, jc.name):
        return _Run(jc, store, tgt, hooks or Hooks(), probe).run(dry_run, full)


class _Run:
    def __init__(self, jc: BackupConfig, store: Store, target: Target, hooks: Hooks,
                 probe: Future[streams.Wanted] | None = None, ahead: Ahead | None = None
                 ) -> None:
        self.jc, self.store, self.target, self.hooks = jc, store, target, hooks
        self.t0 = time.monotonic()
        self.current_id = ""
        self._probe, self._ahead = probe, ahead

    def run(self, dry_run: bool, full: bool) -> BackupResult:
        # The zfs probes behind the send flags (five short processes) run while
        # the target lists and reads the manifests.
        if self._probe is None:
            self._probe = streams.wanted_soon(self.jc.dataset, self.jc.raw)
        ms = catalog.load(self.target, self.jc.name)
        row = rows.unfinished(self.store, self.jc.name)
        if row is not None and full and row.base_guid is not None and not dry_run:
            self._abandon(row, "a full backup was asked for")
            row = None
        if row is not None:
            resumable = self._resumable(row, ms)
            if resumable is not None and dry_run:
                return BackupResult(self.jc.name, True, row.id, row.snapshot,
                                    resumable[1].name if resumable[1] else None, resumed=True)
            if resumable is not None:
                if self._ahead is not None:
                    self._ahead.close()  # not needed: the attempt's own snapshot goes on
                flags = self._flags_for(resumable[1], ms)
                return self._upload(row.id, resumable[0], resumable[1], flags, ms,
                                    created=False, resumed=True)
        base, flags = (None, self._wanted()) if full else self._choose_base(ms)
        if dry_run:
            name = snapshots.new_name(self.jc.dataset, self.jc.snapshot_prefix)
            return BackupResult(self.jc.name, True, None, name, base.name if base else None)
        snap = self._ahead.take() if self._ahead is not None else snapshots.create(
            self.jc.dataset, self.jc.snapshot_prefix, self.jc.name)
        log.info("%s: took %s (%s)", self.jc.name, snap.name,
                 f"incremental from {base.name}" if base else "full")
        return self._upload(mf.new_id(), snap, base, flags, ms, created=True, resumed=False)

    def _resumable(self, row: rows.BackupRow, ms: list[Manifest]
                   ) -> tuple[Snapshot, Snapshot | None] | None:
        """(snapshot, base) of an unfinished attempt that can go on; else mark it dead."""
        if any(m.id == row.id for m in ms):
            rows.set_state(self.store, row.id, "complete")  # killed after the manifest
            return None
        snap = snapshots.get(row.snapshot)
        base = None if row.base_guid is None else self._source(row.base_guid)
        if snap is None or snap.guid != row.guid or (row.base_guid is not None
                                                     and base is None):
            log.warning("%s: unfinished backup %s cannot be resumed (snapshot or base gone); "
                        "starting over", self.jc.name, row.id)
            rows.finish(self.store, row.id, "abandoned", error="snapshot or base gone")
            return None
        log.info("%s: resuming unfinished backup %s of %s", self.jc.name, row.id, snap.name)
        return snap, base

    def _abandon(self, row: rows.BackupRow, why: str) -> None:
        """Give up an unfinished incremental attempt: its snapshot (ours, never
        uploaded) goes; its chunks are swept by the next remote prune."""
        log.info("%s: abandoning unfinished backup %s: %s", self.jc.name, row.id, why)
        rows.finish(self.store, row.id, "abandoned", error=why)
        snap = snapshots.get(row.snapshot)
        if snap is not None and snap.guid == row.guid and row.created_snapshot:
            snapshots.destroy(snap, self.jc.name, self.jc.snapshot_prefix)

    def _wanted(self) -> tuple[str, ...]:
        return self._probed().flags

    def _probed(self) -> streams.Wanted:
        if self._probe is None:
            self._probe = streams.wanted_soon(self.jc.dataset, self.jc.raw)
        return self._probe.result()

    def _flags_for(self, base: Snapshot | None, ms: list[Manifest]) -> tuple[str, ...]:
        """Flags of a resumed attempt: those its base was sent with, where usable."""
        now = self._wanted()
        m = next((m for m in reversed(ms) if base is not None
                  and m.snapshot_guid == base.guid), None)
        same = None if m is None else streams.continue_with(m.send_flags, now)
        return now if same is None else same

    def _choose_base(self, ms: list[Manifest]) -> tuple[Snapshot | None, tuple[str, ...]]:
        """The newest uploaded-and-confirmed snapshot still present locally and the
        flags to continue its chain with, unless a new full is due (full_every: age
        like "30d" or a chain length like "10", or send flags that cannot continue)."""
        now = self._wanted()
        base = self._base_manifest(ms)
        if base is None:
            return None, now
        same = streams.continue_with(base[0].send_flags, now)
        if same is None:
            log.warning("%s: %s was sent with %s; this run needs %s: sending a new full",
                        self.jc.name, base[0].snapshot,
                        " ".join(streams.stream_flags(base[0].send_flags)) or "no flags",
                        " ".join(now) or "no flags")
            return None, now
        return base[1], same

    def _sources(self) -> dict[int, Snapshot]:
        """Local incremental sources by GUID: snapshots, and bookmarks of snapshots
        that are gone."""
        local = {b.guid: b for b in bookmarks.list_bookmarks(self.jc.dataset)}
        local.update({s.guid: s for s in snapshots.list_snapshots(self.jc.dataset)})
        return local

    def _source(self, guid: int) -> Snapshot | None:
        return self._sources().get(guid)

    def _base_manifest(self, ms: list[Manifest]) -> tuple[Manifest, Snapshot] | None:
        local = self._sources()
        for m in reversed(ms):
            if m.dataset != self.jc.dataset or m.snapshot_guid not in local:
                continue
            try:
                ch = catalog.chain(ms, m)
            except catalog.ChainError as e:
                log.warning("%s: %s; not using it as a base", self.jc.name, e)
                continue
            if full_due(self.jc.full_every, ch):
                log.info("%s: full_every=%s reached: sending a new full", self.jc.name,
                         self.jc.full_every)
                return None
            return m, local[m.snapshot_guid]
        return None

    def _upload(self, backup_id: str, snap: Snapshot, base: Snapshot | None,
                flags: tuple[str, ...], ms: list[Manifest], *, created: bool,
                resumed: bool) -> BackupResult:
        if not resumed:
            rows.start(self.store, id=backup_id, job=self.jc.name, dataset=self.jc.dataset,
                       snapshot=snap.name, guid=snap.guid,
                       base_guid=base.guid if base else None, created_snapshot=created)
        self.current_id = backup_id
        try:
            m, up = self._send_and_commit(backup_id, SendSpec(snap, base, flags), resumed)
        except BaseException as e:
            self._fail(self.current_id, snap, e)
            raise
        rows.finish(self.store, m.id, "complete", chunks=len(m.chunks), total_size=m.total_size)
        pruned_local, pruned_remote = self._after_commit(snap, m, ms)
        return BackupResult(
            self.jc.name, False, m.id, snap.name, base.name if base else None, resumed=resumed,
            chunks=len(m.chunks), uploaded=up.uploaded, skipped=up.skipped,
            total_size=m.total_size, seconds=time.monotonic() - self.t0,
            upload_seconds=float(getattr(self.target, "busy_seconds", up.upload_seconds)),
            stream_seconds=up.seconds,
            stream_waited=up.stats.producer_wait, upload_waited=up.stats.uploader_wait,
            overlapped=up.stats.overlap_bytes, restarts=up.restarts, streamed=up.streamed,
            pruned_local=pruned_local, pruned_remote=pruned_remote)

    def _send_and_commit(self, backup_id: str, spec: SendSpec, resuming: bool
                         ) -> tuple[Manifest, upload.Uploaded]:
        snap, base = spec.snapshot, spec.base
        try:
            up = upload.upload_stream(self.target, self._plan(backup_id, spec, resuming),
                                      self.hooks.after_chunk, self.hooks.progress)
        except upload.StreamChanged as e:
            # Same snapshot, different bytes (another zfs or compressor version):
            # the old chunks cannot be mixed with new ones. Start clean once.
            log.warning("%s; restarting under a new backup id", e)
            rows.finish(self.store, backup_id, "abandoned", error=str(e))
            _delete_quietly(self.target, mf.chunk_dir(self.jc.name, backup_id))
            backup_id = self.current_id = mf.new_id()
            rows.start(self.store, id=backup_id, job=self.jc.name, dataset=self.jc.dataset,
                       snapshot=snap.name, guid=snap.guid,
                       base_guid=base.guid if base else None, created_snapshot=True)
            up = upload.upload_stream(self.target, self._plan(backup_id, spec, False),
                                      self.hooks.after_chunk, self.hooks.progress)
        for stray in upload.confirm_all(self.target, up, mf.chunk_dir(self.jc.name, backup_id)):
            self.target.delete(stray)
        m = Manifest(
            job=self.jc.name, id=backup_id, dataset=self.jc.dataset, snapshot=snap.name,
            snapshot_guid=snap.guid,
            base_snapshot=base.name.replace("#", "@", 1) if base else None,
            base_guid=base.guid if base else None, send_flags=spec.flags,
            compression=self.jc.compression, compression_level=self.jc.compression_level,
            chunk_size=self.jc.chunk_size, chunks=up.chunks, total_size=up.total_size,
            created=time.time(), storage_class=self.jc.target.storage_class,
            extra={"encryption": self._probed().encryption,
                   "zfs_send_flags_available": "".join(sorted(streams.caps().send))})
        body, size = mf.as_file(m)
        sha = _sha256(body.getvalue())
        self.target.put(mf.manifest_key(self.jc.name, backup_id), body, size, sha, None,
                        self.jc.target.manifest_storage_class)
        return m, up

    def _plan(self, backup_id: str, spec: SendSpec, resuming: bool) -> upload.UploadPlan:
        return upload.UploadPlan(
            job=self.jc.name, backup_id=backup_id, spec=spec, compression=self.jc.compression,
            level=self.jc.compression_level, chunk_size=self.jc.chunk_size,
            storage_class=self.jc.target.storage_class, spool_dir=self.jc.spool_dir,
            resuming=resuming, restarts=self.jc.target.retries)

    def _fail(self, backup_id: str, snap: Snapshot, e: BaseException) -> None:
        """A reported failure: no manifest was written, so the snapshot is not uploaded;
        destroy it (it is ours) and record why. A kill -9 never gets here: resume."""
        rows.finish(self.store, backup_id, "failed", error=str(e) or type(e).__name__)
        try:
            snapshots.destroy(snap, self.jc.name, self.jc.snapshot_prefix)
        except DedupdError as de:
            log.error("%s: could not destroy %s after the failure: %s", self.jc.name,
                      snap.name, de)
        if not isinstance(e, TemporaryFailure):
            _delete_quietly(self.target, mf.chunk_dir(self.jc.name, backup_id))

    def _after_commit(self, snap: Snapshot, m: Manifest, ms: list[Manifest]
                      ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Keep the next base and prune locally (zfs commands only) in a worker
        thread while the remote prune (target requests, index rows) runs here: the
        two touch nothing in common and each is mostly waiting for processes, so
        together they take the longer one's time, not the sum. The local side's
        error, if any, is raised after both ended."""
        local: list[tuple[str, ...]] = []
        failed: list[BaseException] = []

        def local_side() -> None:
            try:
                local.append(keep.keep_and_prune(self.jc, snap, m, ms))
            except BaseException as e:  # raised in this thread below
                failed.append(e)

        worker = threading.Thread(target=local_side, name=f"dedupd-keep-{self.jc.name}")
        worker.start()
        try:
            remote = retention.prune_remote(self.target, self.jc, self.store, [*ms, m],
                                            dry_run=False)
        finally:
            worker.join()
        if failed:
            raise failed[0]
        return local[0], remote


def full_due(full_every: str, chain: list[Manifest]) -> bool:
    """'30d'/'12h': the chain's full is older than that; '10': 10+ incrementals."""
    text = full_every.strip().lower()
    if not text or text in ("0", "never"):
        return False
    if text.isdigit():
        return len(chain) - 1 >= int(text)
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - chain[0].created >= float(text[:-1]) * units[text[-1]]
    raise DedupdError(f"full_every: cannot read {full_every!r} (use e.g. 30d, 12h or 10)")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _delete_quietly(target: Target, prefix: str) -> None:
    try:
        upload.delete_prefix(target, prefix)
    except DedupdError as e:
        log.warning("could not delete %s (retention will): %s", prefix, e)
