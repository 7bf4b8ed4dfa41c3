"""The manifest: one JSON object per backup, written last as its commit marker.

A backup exists (is a restore point) if and only if its manifest exists. The
manifest lists every chunk with its size and SHA-256 and links the backup into
its chain by snapshot GUIDs (names can be reused; GUIDs cannot). Layout:

    <prefix><job>/manifests/<backup id>.json
    <prefix><job>/chunks/<backup id>/<seq, 6 digits><.zst|.gz|>

See docs/backup-layout.md for the by-hand restore recipe.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from dedupd import __version__
from dedupd.backup.compress import SUFFIX
from dedupd.errors import DedupdError

FORMAT = 1


class ManifestError(DedupdError):
    """A manifest is unreadable or inconsistent."""


@dataclass(frozen=True)
class ChunkRef:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    job: str
    id: str
    dataset: str
    snapshot: str  # full name pool/ds@snap at backup time
    snapshot_guid: int
    base_snapshot: str | None
    base_guid: int | None  # None: a full stream
    send_flags: tuple[str, ...]
    compression: str
    compression_level: int
    chunk_size: int
    chunks: tuple[ChunkRef, ...]
    total_size: int  # bytes of the stored (compressed) stream
    created: float
    storage_class: str
    tool_version: str = __version__
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return self.base_guid is None

    def to_bytes(self) -> bytes:
        d = asdict(self)
        # GUIDs use all 64 bits: kept as decimal strings so no JSON reader rounds them.
        d["snapshot_guid"] = str(self.snapshot_guid)
        d["base_guid"] = None if self.base_guid is None else str(self.base_guid)
        d["send_flags"] = list(self.send_flags)
        return (json.dumps(d, indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "manifest") -> Manifest:
        try:
            d = json.loads(data)
            if not isinstance(d, dict):
                raise ManifestError(f"{where}: not a valid manifest: a JSON "
                                    f"{type(d).__name__}, not an object")
            if d.get("format") != FORMAT:
                raise ManifestError(f"{where}: unsupported format {d.get('format')!r}")
            chunks = tuple(ChunkRef(c["key"], int(c["size"]), str(c["sha256"]))
                           for c in d["chunks"])
            return cls(
                job=d["job"], id=d["id"], dataset=d["dataset"], snapshot=d["snapshot"],
                snapshot_guid=int(d["snapshot_guid"]), base_snapshot=d.get("base_snapshot"),
                base_guid=None if d.get("base_guid") is None else int(d["base_guid"]),
                send_flags=tuple(d["send_flags"]), compression=d["compression"],
                compression_level=int(d["compression_level"]), chunk_size=int(d["chunk_size"]),
                chunks=chunks, total_size=int(d["total_size"]), created=float(d["created"]),
                storage_class=d["storage_class"], tool_version=d.get("tool_version", "?"),
                extra=d.get("extra") or {})
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ManifestError(f"{where}: not a valid manifest: {e}") from None
        except RecursionError:
            raise ManifestError(f"{where}: not a valid manifest: nested too deep") from None


def new_id() -> str:
    """Sortable by creation time; the random tail keeps a restarted attempt distinct."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def manifest_dir(job: str) -> str:
    return f"{job}/manifests/"


def manifest_key(job: str, backup_id: str) -> str:
    return f"{manifest_dir(job)}{backup_id}.json"


def chunk_dir(job: str, backup_id: str) -> str:
    return f"{job}/chunks/{backup_id}/"


def chunk_key(job: str, backup_id: str, seq: int, compression: str) -> str:
    return f"{chunk_dir(job, backup_id)}{seq:06d}{SUFFIX[compression]}"


def id_of_manifest_key(key: str) -> str | None:
    name = key.rsplit("/", 1)[-1]
    return name[: -len(".json")] if name.endswith(".json") else None


def as_file(m: Manifest) -> tuple[io.BytesIO, int]:
    data = m.to_bytes()
    return io.BytesIO(data), len(data)
