"""HeldRows (dedupd/index/held.py): new inode rows held a few record batches so that
their hashes are written with them."""

from __future__ import annotations

import queue
import threading
import time

from dedupd.index.bulk import HEADLESS_MAX
from dedupd.index.held import LAG, HeldRows
from dedupd.index.store import HashUpdate

BIG = HEADLESS_MAX + 1


def row(ino: int, size: int) -> list[object]:
    return [1, ino, size, 1000, 5, None, None, 7, 0]


def test_hashes_fill_the_held_rows_and_the_rest_go_to_the_index() -> None:
    h = HeldRows(HEADLESS_MAX)
    h.next_batch([])
    h.hold({(9, 1): row(1, 10), (9, 2): row(2, BIG), (9, 3): row(3, BIG)})
    rest = h.fill([
        HashUpdate(9, 1, 11, b"f1", (10, 1000, 1005)),  # small, whole: its head is dropped
        HashUpdate(9, 2, 22, None, (BIG, 1000, 1005)),  # a large file's head first ...
        HashUpdate(9, 2, 2 ** 64 - 1, b"f2", (BIG, 1000, 1005)),  # ... then whole: kept
        HashUpdate(9, 3, 33, b"f3", (BIG, 1000, 999)),  # read at another stat: dropped
        HashUpdate(9, 4, 44, b"f4", None),  # not held: for the index's UPDATE
    ])
    assert rest == [HashUpdate(9, 4, 44, b"f4", None)]
    out = {r[1]: r for r in h.next_batch([])}  # filled rows go at the next batch
    assert set(out) == {1, 2}
    assert out[1][5:7] == [None, b"f1"]
    assert out[2][5:7] == [-1, b"f2"]  # signed, as the index stores it
    assert h.release() == ([row(3, BIG)], [])


def test_rows_and_digests_wait_lag_batches_and_a_batch_takes_its_own_inodes() -> None:
    h = HeldRows(HEADLESS_MAX)
    h.next_batch([])
    h.hold({(9, 1): row(1, 10), (9, 2): row(2, 10)})
    assert h.defer([(b"/d", b"digest")]) == []
    assert [r[1] for r in h.next_batch([(9, 2)])] == [2]  # another name of inode 2
    for _ in range(LAG - 2):
        assert h.next_batch([]) == [] and h.defer([]) == []
    assert [r[1] for r in h.next_batch([])] == [1]  # LAG batches old
    assert h.defer([]) == [(b"/d", b"digest")]  # every row of its batch is written
    h.hold({(9, 5): row(5, 10)})
    h.drop([(9, 5)])  # found gone: not written
    assert h.release() == ([], [])


class _SlowGet(dict[tuple[int, int], list[object]]):
    """Held rows whose lookup lets the other thread run right after it (widens the
    window between finding a row and filling it)."""

    def get(self, key: tuple[int, int], default: object = None) -> object:
        got = dict.get(self, key, default)
        time.sleep(0.0001)
        return got


def test_hashes_filled_from_another_thread_are_written_or_returned() -> None:
    """With FEED_PROCS = 0 the hashes come from the feeder's thread while the record
    thread takes rows to write: each hash is in the row as written, or returned for
    the index's UPDATE, never put into a row already taken (and lost)."""
    h = HeldRows(HEADLESS_MAX)
    h.rows = _SlowGet()  # type: ignore[assignment]
    n, per = 300, 10
    written: dict[int, tuple[object, ...]] = {}
    returned: set[int] = set()
    known: queue.Queue[int | None] = queue.Queue()

    def feeder() -> None:
        while (ino := known.get()) is not None:
            for u in h.fill([HashUpdate(9, ino, 5, b"h", (BIG, 1000, 1005))]):
                returned.add(u.ino)

    t = threading.Thread(target=feeder)
    t.start()
    for b in range(n):
        # as the record thread: rows taken (and written: copied), new ones held
        written.update((r[1], tuple(r)) for r in h.next_batch([]))
        inos = range(b * per, (b + 1) * per)
        h.hold({(9, i): row(i, BIG) for i in inos})
        for i in inos:
            known.put(i)
        time.sleep(0.0005)
    known.put(None)
    t.join()
    written.update((r[1], tuple(r)) for r in h.release()[0])
    lost = [i for i in range(n * per) if written[i][6] != b"h" and i not in returned]
    assert lost == []
