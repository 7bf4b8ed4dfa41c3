"""The ring spool on its own: two real threads over one real temp file.

It must hand every chunk over intact and in order, never grow past one chunk,
let the producer run ahead of a slow reader (and wait for a fast one), refuse a
rewind into overwritten bytes, and stop both sides on abort without a hang.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import time
from collections.abc import Callable

import pytest

from dedupd.backup.ring import BodyGone, Ring, RingAborted, Sealed, produce

CHUNK = 256 * 1024


class SlowStream(io.RawIOBase):
    """A readable stream that sleeps before each read (a slow zfs send)."""

    def __init__(self, data: bytes, pause: float) -> None:
        self.inner, self.pause = io.BytesIO(data), pause

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        time.sleep(self.pause)
        return self.inner.readinto(b)


def _run(stream: io.RawIOBase | io.BytesIO, ring: Ring,
         consume: Callable[[Ring], list[tuple[Sealed, bytes]]]
         ) -> tuple[list[tuple[Sealed, bytes]], int]:
    got: list[tuple[Sealed, bytes]] = []
    t = threading.Thread(target=lambda: got.extend(consume(ring)))
    t.start()
    n = produce(stream, CHUNK, ring, want_md5=True)  # type: ignore[arg-type]
    ring.end()
    t.join(timeout=60)
    assert not t.is_alive()
    return got, n


def _reader(pause: float, sizes: list[int]) -> Callable[[Ring], list[tuple[Sealed, bytes]]]:
    def consume(ring: Ring) -> list[tuple[Sealed, bytes]]:
        out = []
        while (c := ring.take()) is not None:
            body = ring.body()
            parts = []
            while b := body.read(16 * 1024):
                parts.append(b)
                time.sleep(pause)
                sizes.append(os.fstat(ring._fd).st_size)
            out.append((c, b"".join(parts)))
            ring.release()
        return out
    return consume


@pytest.mark.parametrize("length", [0, 1, CHUNK, 3 * CHUNK, 5 * CHUNK + 12345])
def test_every_chunk_arrives_intact_in_order_and_disk_stays_one_chunk(length: int) -> None:
    data = random.Random(length).randbytes(length)
    sizes: list[int] = []
    with Ring() as ring:
        got, n = _run(io.BytesIO(data), ring, _reader(0.0, sizes))
    assert n == len(got) == -(-length // CHUNK)
    assert [c.seq for c, _ in got] == list(range(n))
    assert b"".join(body for _, body in got) == data
    for c, body in got:
        assert c.size == len(body)
        assert c.sha256 == hashlib.sha256(body).hexdigest()
        assert c.md5 == hashlib.md5(body).hexdigest()
    assert max(sizes, default=0) <= CHUNK


def test_producer_runs_ahead_of_a_slow_reader() -> None:
    data = random.Random(1).randbytes(4 * CHUNK)
    with Ring() as ring:
        got, _ = _run(io.BytesIO(data), ring, _reader(0.002, []))
        st = ring.stats
    assert b"".join(b for _, b in got) == data
    # chunks 1..3 were written while the one before was being read
    assert st.overlap_bytes >= 2 * CHUNK
    assert st.producer_wait > 0


def test_fast_reader_waits_for_a_slow_producer() -> None:
    data = random.Random(2).randbytes(3 * CHUNK)
    with Ring() as ring:
        got, _ = _run(SlowStream(data, 0.01), ring, _reader(0.0, []))
        st = ring.stats
    assert b"".join(b for _, b in got) == data
    assert st.uploader_wait > st.producer_wait


def test_rewind_is_refused_once_the_next_chunk_overwrote_the_start() -> None:
    big = 3 * 1024 * 1024  # more than the body's 1 MiB read-ahead
    data = random.Random(3).randbytes(2 * big)
    seen: dict[str, object] = {}

    def consume(ring: Ring) -> None:
        c = ring.take()
        assert c is not None and c.seq == 0
        body = ring.body()
        body.seek(0)  # nothing read, nothing overwritten: a first attempt may rewind
        first = body.read(1000)
        body.seek(0)  # still inside the read-ahead held in memory
        assert body.read(1000) == first
        parts = [first]
        while sum(map(len, parts)) < 2 * 1024 * 1024:
            parts.append(body.read(64 * 1024))
        while ring.stats.overlap_bytes == 0:  # the producer now writes chunk 1 behind us
            time.sleep(0.001)
        try:
            body.seek(0)
        except BodyGone as e:
            seen["gone"] = e
        seen["read"] = b"".join(parts)
        ring.abort("test: the upload failed")

    with Ring() as ring:
        t = threading.Thread(target=consume, args=(ring,))
        t.start()
        with pytest.raises(RingAborted, match="the upload failed"):
            produce(io.BytesIO(data), big, ring, want_md5=False)
        t.join(timeout=30)
    assert not t.is_alive()
    assert isinstance(seen.get("gone"), BodyGone)
    got = seen["read"]
    assert isinstance(got, bytes) and got == data[:len(got)]


def test_abort_by_the_producer_wakes_a_waiting_uploader() -> None:
    with Ring() as ring:
        err: list[BaseException] = []

        def wait() -> None:
            try:
                ring.take()
            except RingAborted as e:
                err.append(e)

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.05)
        ring.abort("zfs send failed")
        t.join(timeout=10)
    assert not t.is_alive() and err and "zfs send failed" in str(err[0])
