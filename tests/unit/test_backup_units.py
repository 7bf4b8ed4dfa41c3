"""Pure parts of the backup path: chunker, manifest, chains, remote retention plan."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from dedupd.backup import catalog, retention
from dedupd.backup.chunker import Spool, chunks
from dedupd.backup.jobs import full_due
from dedupd.backup.manifest import ChunkRef, Manifest, ManifestError
from dedupd.backup.targets import ObjectInfo, confirmed
from dedupd.errors import DedupdError


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 10_000])
def test_chunker_cuts_fixed_sizes_and_hashes(size: int) -> None:
    data = random.Random(size).randbytes(size)
    out = []
    with Spool() as sp:
        for c in chunks(io.BytesIO(data), 4096, sp, want_md5=True):
            body = c.file.read()
            assert len(body) == c.size
            assert hashlib.sha256(body).hexdigest() == c.sha256
            assert hashlib.md5(body).hexdigest() == c.md5
            out.append((c.seq, body))
    assert b"".join(b for _, b in out) == data
    assert [s for s, _ in out] == list(range(len(out)))
    assert all(len(b) == 4096 for _, b in out[:-1])
    assert len(out) == -(-size // 4096)


def _m(id: str, guid: int, base: int | None, created: float) -> Manifest:
    return Manifest(job="j", id=id, dataset="p/d", snapshot=f"p/d@s{guid}",
                    snapshot_guid=guid, base_snapshot=None if base is None else f"p/d@s{base}",
                    base_guid=base, send_flags=(), compression="zstd", compression_level=3,
                    chunk_size=1 << 20, chunks=(ChunkRef(f"j/chunks/{id}/000000.zst", 5,
                                                         "ab" * 32),),
                    total_size=5, created=created, storage_class="STANDARD")


def test_manifest_roundtrip_keeps_64bit_guids() -> None:
    m = _m("a", 2**64 - 1, 2**63 + 5, 1.5)
    back = Manifest.from_bytes(m.to_bytes())
    assert back == m
    assert b'"18446744073709551615"' in m.to_bytes()
    with pytest.raises(ManifestError):
        Manifest.from_bytes(b'{"format": 1}')


def test_chain_follows_guids_and_detects_breaks() -> None:
    ms = [_m("f1", 1, None, 1), _m("i1", 2, 1, 2), _m("i2", 3, 2, 3), _m("f2", 4, None, 4),
          _m("i3", 5, 4, 5)]
    assert [m.id for m in catalog.chain(ms, ms[2])] == ["f1", "i1", "i2"]
    assert [m.id for m in catalog.chain(ms, ms[4])] == ["f2", "i3"]
    with pytest.raises(catalog.ChainError):
        catalog.chain([ms[0], ms[2]], ms[2])
    assert catalog.find(ms, "s3").id == "i2" and catalog.find(ms, None).id == "i3"
    with pytest.raises(DedupdError):
        catalog.find(ms, "nope")


def test_remote_plan_deletes_only_whole_unneeded_chains() -> None:
    ms = [_m("f1", 1, None, 1), _m("i1", 2, 1, 2), _m("f2", 3, None, 3), _m("i2", 4, 3, 4),
          _m("i3", 5, 4, 5), _m("f3", 6, None, 6)]
    assert [m.id for m in retention.remote_plan(ms, 2)] == ["i1", "f1"]
    assert retention.remote_plan(ms, 3) == retention.remote_plan(ms, 2)
    assert [m.id for m in retention.remote_plan(ms, 1)] == ["i3", "i2", "f2", "i1", "f1"]
    assert retention.remote_plan(ms, 6) == []
    # a broken chain is never auto-deleted
    broken = [_m("x", 9, 8, 0.5)] + ms
    assert "x" not in [m.id for m in retention.remote_plan(broken, 1)]


def test_full_every() -> None:
    ch = [_m("f1", 1, None, 0), _m("i1", 2, 1, 1)]
    assert full_due("1", ch) and not full_due("2", ch)
    assert full_due("30d", ch) and not full_due("never", ch)
    with pytest.raises(DedupdError):
        full_due("soon", ch)


def test_confirmed_needs_size_and_a_checksum() -> None:
    sha = "cd" * 32
    assert confirmed(ObjectInfo("k", 5, sha, None, "STANDARD"), 5, sha, None)
    assert not confirmed(ObjectInfo("k", 6, sha, None, "STANDARD"), 5, sha, None)
    assert not confirmed(ObjectInfo("k", 5, "00" * 32, None, "STANDARD"), 5, sha, None)
    assert confirmed(ObjectInfo("k", 5, None, "m", "STANDARD"), 5, sha, "m")
    assert not confirmed(ObjectInfo("k", 5, None, None, "STANDARD"), 5, sha, "m")
    assert not confirmed(None, 5, sha, None)
