"""HashWriter: the hashes an engine learnt, written to the index in few, larger writes."""

from __future__ import annotations

from collections.abc import Iterable

from dedupd.hashing.rule import Hashed, Key
from dedupd.index.store import HashUpdate, Store


class HashWriter:
    """Buffers hash updates and forgotten inodes so the index sees few, larger writes."""

    def __init__(self, store: Store, batch: int = 2000) -> None:
        self.store, self.batch = store, batch
        self.updates: list[HashUpdate] = []
        self.gone: list[Key] = []

    def add(self, res: Hashed, groups: bool = True) -> None:
        """A size group's new hashes and vanished inodes; groups=False leaves the
        hashes of grouped files to whoever acts on the groups (an extent dedupe
        writes them in order with its own writes)."""
        self.put(res.updates, res.gone)
        if groups:
            self.put(u for g in res.groups for u in g.updates)

    def put(self, updates: Iterable[HashUpdate], gone: Iterable[Key] = ()) -> None:
        held = self.store.held
        if held is not None:  # rows not written yet take their hashes in memory
            updates = held.fill(updates)
            gone = list(gone)
            held.drop(gone)
        self.updates.extend(updates)
        self.gone.extend(gone)
        if len(self.updates) >= self.batch:
            self.flush()

    def flush(self) -> None:
        self.store.save_hashes(self.updates)
        if self.gone:
            self.store.forget(self.gone)
        self.updates, self.gone = [], []
