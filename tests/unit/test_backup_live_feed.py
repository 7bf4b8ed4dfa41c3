"""LiveFeed's schedule of live uploads, against a target that records them.

The chunk after the current one is started ahead once half of the current one
is fed (rclone takes ~50 ms to start), never earlier: a stream whose last chunk
is short starts no upload for a chunk that never comes; the first chunk's is
started with the feed. Every upload ends finished or aborted.
"""

from __future__ import annotations

import io
import threading

import pytest

from dedupd.backup.live import LiveFeed
from dedupd.backup.ring import Ring, produce

CHUNK = 64 * 1024


class _Put:
    def __init__(self, log: list[str], key: str) -> None:
        self.log, self.key, self.data = log, key, bytearray()
        self.takes_short = True
        log.append(f"begin {key}")

    def write(self, data: memoryview) -> None:
        self.data += data

    def finish(self) -> bool:
        self.log.append(f"finish {self.key} {len(self.data)}")
        return True

    def abort(self) -> None:
        self.log.append(f"abort {self.key}")


class _Target:
    """Only what LiveFeed uses of a target: begin_put."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def begin_put(self, key: str, size: int, storage_class: str) -> _Put:
        assert size == CHUNK
        return _Put(self.log, key)


def _feed(total: int) -> list[str]:
    tgt = _Target()
    live = LiveFeed(tgt, lambda seq: f"c{seq}", CHUNK, "STANDARD")  # type: ignore[arg-type]
    assert tgt.log == ["begin c0"], "the first chunk's upload starts with the feed"
    with Ring() as ring:
        taken: list[int] = []

        def uploader() -> None:
            while (c := ring.take()) is not None:
                taken.append(c.size)
                ring.skip_read()
                ring.release()

        t = threading.Thread(target=uploader)
        t.start()
        # 4 KiB reads: the half-chunk point is crossed inside a chunk, as with a pipe
        stream = io.BufferedReader(io.BytesIO(bytes(total)), buffer_size=4096)  # type: ignore[arg-type]
        produce(stream, CHUNK, ring, want_md5=False, live=live)
        ring.end()
        t.join()
    assert sum(taken) == total
    return tgt.log


@pytest.mark.parametrize("last", [1, CHUNK // 2 - 1])
def test_no_upload_is_started_for_a_chunk_after_a_short_last_one(last: int) -> None:
    log = _feed(2 * CHUNK + last)
    assert [x for x in log if x.startswith("begin")] == ["begin c0", "begin c1", "begin c2"]
    assert log[-1] == f"finish c2 {last}"
    assert not [x for x in log if x.startswith("abort")]


def test_the_next_chunk_is_started_ahead_past_half_and_aborted_at_the_end() -> None:
    log = _feed(2 * CHUNK + CHUNK // 2 + 1)
    begins = [x for x in log if x.startswith("begin")]
    assert begins == ["begin c0", "begin c1", "begin c2", "begin c3"]
    # each one ahead: started before the chunk before it was finished
    assert log.index("begin c1") < log.index(f"finish c0 {CHUNK}")
    assert log.index("begin c2") < log.index(f"finish c1 {CHUNK}")
    assert log[-1] == "abort c3"


def test_an_empty_stream_aborts_the_first_chunks_upload() -> None:
    assert _feed(0) == ["begin c0", "abort c0"]
