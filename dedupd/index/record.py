"""Recording walk results into directories/entries/inodes, and forgetting what a
full walk no longer saw. Runs inside the caller's transaction (Store.record,
Store.finish_scan); Store is only read for its helpers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from dedupd.files.events import FileEvent
from dedupd.index.bulk import HEADLESS_MAX
from dedupd.index.db import BATCH, S64, U64, chunks, from_s64
from dedupd.index.dirs import split

if TYPE_CHECKING:
    from dedupd.index.store import IndexedFile, RecordResult, Store

Key = tuple[int, int]  # (filesystem id, signed ino)
_new = tuple.__new__  # a NamedTuple's own __new__ is a Python function: 3x the cost
_dev_ino = itemgetter(1, 2)  # (dev, ino) of a FileEvent, in C


def record_batch(store: Store, c: Any, scan_id: int, events: Sequence[FileEvent],
                 fss: dict[int, int], touch_inodes: bool,
                 digests: Sequence[tuple[bytes, bytes]] = (),
                 hashes: dict[tuple[int, int], Sequence[Any]] | None = None) -> RecordResult:
    """See Store.record. fss: the filesystem id of each device of the events."""
    from dedupd.index.store import RecordResult

    held = store.held
    if held is not None:  # rows held back in memory (held.py) that this batch must find
        # another name of an inode held: a hardlink, or a file of one link whose
        # directory moved during the scan (listed before the move and after it)
        rows = held.next_batch(map(_dev_ino, events))
        if rows:  # in key order: each B-tree page met once, not once per row
            store.bulk.upsert_inodes(c, sorted(rows))
    by_key, extra, by_dir = _keyed(store, c, events, fss)
    # directories made since the scan began: no name of theirs is known but those
    # written since, and a walk lists each name once (dirs.py, DirTree.made)
    fresh = store.dirs.made
    known, old = _looked_up(store, c, by_key, by_dir, fresh)
    # where inode numbers are made up at each mount (FAT), a row is this file's
    # only when its name already had that number (else it is recorded as new)
    renumbered = store.fsmap.renumbered
    vouched = {k for did, ents in by_dir.items() for n, k in ents.items()
               if k[0] in renumbered and known.get((did, n)) == k[1]} if renumbered else set()
    upserts: list[list[Any]] = []
    touched: dict[int, list[int]] = defaultdict(list)
    hold: dict[tuple[int, int], list[Any]] | None = None if held is None else {}
    if not old and not renumbered:  # nothing of the batch indexed (most of a first scan)
        new, changed = len(by_key), 0
        files = _all_new(by_key, extra, scan_id, upserts, hold,
                         hashes if hold is None else None)
    else:
        new, changed, files = _compared(by_key, extra, old, renumbered, vouched, scan_id,
                                        upserts, hold, touched)
    erows = _entry_rows(store, c, scan_id, by_dir, known, fresh)
    if held is not None and hold:
        held.hold(hold)
    if upserts:
        store.bulk.upsert_inodes(c, upserts)
    for fs, inos in touched.items() if touch_inodes else ():
        for part in chunks(inos, BATCH):
            store.bulk.touch_inodes(c, scan_id, fs, part)
    claimed = [k for k in by_key if k[0] in renumbered and k in old and k not in vouched
               ] if renumbered else []
    if claimed:
        _drop_claimed(store, c, claimed, {(did, n) for did, ents in by_dir.items() for n in ents})
    if erows:
        store.bulk.upsert_entries(c, erows)
    if held is None:
        _digests(store, c, scan_id, list(by_dir), digests, fresh)
    else:
        _digests(store, c, scan_id, list(by_dir), (), fresh)
        if due := held.defer(digests):
            store_digests(store, c, scan_id, due)
    return RecordResult(new, changed, sum(len(v) for v in touched.values()), tuple(files))


def _all_new(by_key: dict[Key, FileEvent], extra: dict[Key, list[bytes]], scan_id: int,
             upserts: list[list[Any]], hold: dict[tuple[int, int], list[Any]] | None,
             hashes: dict[tuple[int, int], Sequence[Any]] | None = None
             ) -> list[IndexedFile]:
    """The rows of a batch none of whose inodes is indexed (to the upserts, or held
    by (dev, ino)), and its files as now indexed. Once per file of a first scan.
    hashes: see Store.record (those taken are written as save_hashes would)."""
    from dedupd.index.store import IndexedFile

    files: list[IndexedFile] = []
    add = files.append
    for k, e in by_key.items():
        path, dev, ino, size, mtime, ctime = e[0], e[1], e[2], e[3], e[4], e[5]
        head = full = None
        if hashes and (u := hashes.get((dev, ino))) is not None and (
                u[4] is None or u[4] == (size, mtime, ctime)):
            del hashes[(dev, ino)]
            full = u[3]
            # bulk.save_hashes: a small file's head goes once its full hash is known
            head = None if full is not None and size <= HEADLESS_MAX else u[2]
        row = [k[0], k[1], size, mtime, ctime - mtime,
               None if head is None else head - U64 if head >= S64 else head, full, scan_id, 0]
        if hold is None:
            upserts.append(row)
        else:
            hold[(dev, ino)] = row
        add(_new(IndexedFile, (dev, ino, size, mtime, ctime, head, full, 0,
                               (path,) if k not in extra else tuple(sorted(extra[k])))))
    return files


def _compared(by_key: dict[Key, FileEvent], extra: dict[Key, list[bytes]],
              old: dict[Key, tuple[Any, ...]], renumbered: set[int],
              vouched: set[Key], scan_id: int, upserts: list[list[Any]],
              hold: dict[tuple[int, int], list[Any]] | None, touched: dict[int, list[int]]
              ) -> tuple[int, int, list[IndexedFile]]:
    """Each inode of the batch against its row (old): unchanged (keeps its hashes;
    its key to `touched`), changed or new (a row to the upserts, or held by (dev,
    ino) when new). Returns (new, changed, the batch's files as now indexed)."""
    from dedupd.index.store import IndexedFile

    new = changed = 0
    files: list[IndexedFile] = []
    for k, e in by_key.items():
        # (size, mtime_ns, ctime_ns, unstable, head, full); None: not this file's
        o = old.get(k) if k[0] not in renumbered or k in vouched else None
        paths = (e.path,) if k not in extra else tuple(sorted(extra[k]))
        if o is not None and o[:3] == (e.size, e.mtime_ns, e.ctime_ns):
            touched[k[0]].append(k[1])
            head = None if o[4] is None else from_s64(o[4])
            files.append(_new(IndexedFile, (e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns,
                                            head, o[5], o[3], paths)))
            continue
        if o is None:
            new += 1
            unstable = 0
        else:
            changed += 1
            unstable = o[3] + 1
        # fs, ino, size, mtime_ns, ctime_delta, head, full, seen, unstable (a list when
        # held: held.py fills its hashes in place)
        row: list[Any] = [k[0], k[1], e.size, e.mtime_ns, e.ctime_ns - e.mtime_ns, None, None,
                          scan_id, unstable]
        if o is None and hold is not None and k[0] not in renumbered:
            hold[(e.dev, e.ino)] = row
        else:
            upserts.append(row)
        files.append(_new(IndexedFile, (e.dev, e.ino, e.size, e.mtime_ns, e.ctime_ns,
                                        None, None, unstable, paths)))
    return new, changed, files


def _keyed(store: Store, c: Any, events: Sequence[FileEvent], fss: dict[int, int]
           ) -> tuple[dict[Key, FileEvent], dict[Key, list[bytes]], dict[int, dict[bytes, Key]]]:
    """The batch by inode key (the last event of each), every name of an inode met
    twice (hardlinks), and the names of each directory (ensured: made if new, the
    batch's together). This loop runs once per file of a tree: a walk lists a
    directory's files together, so its names' map is looked up once per run of them."""
    by_key: dict[Key, FileEvent] = {}
    extra: dict[Key, list[bytes]] = {}
    by_path: dict[tuple[bytes, int], dict[bytes, Key]] = {}  # (directory, fs) -> names
    last: tuple[bytes, int] | None = None
    ents: dict[bytes, Key] = {}
    for e in events:
        fs, ino = fss[e.dev], e.ino
        k = (fs, ino - U64 if ino >= S64 else ino)
        if k in by_key:
            extra.setdefault(k, [by_key[k].path]).append(e.path)
        by_key[k] = e
        d, _, name = e.path.rpartition(b"/")
        if last is None or d != last[0] or fs != last[1]:
            last = (d, fs)
            ents = by_path.setdefault(last, {})
        ents[name] = k
    ids = store.dirs.ensure_many(c, [(d or b"/", fs) for d, fs in by_path])
    by_dir: dict[int, dict[bytes, Key]] = {}
    for did, names in zip(ids, by_path.values(), strict=True):
        if did in by_dir:  # one directory under two spellings of its path
            by_dir[did].update(names)
        else:
            by_dir[did] = names
    return by_key, extra, by_dir


def _looked_up(store: Store, c: Any, by_key: dict[Key, FileEvent],
               by_dir: dict[int, dict[bytes, Key]], fresh: set[int]
               ) -> tuple[dict[tuple[int, bytes], int], dict[Key, tuple[Any, ...]]]:
    """What the index has of the batch: the inode each known name had, and the stat
    row of each inode (size, mtime_ns, ctime_ns, unstable, head, full).

    One lookup per directory answers the common (rescan) case: the name is known,
    still names the same inode, and that inode's stat is on the same row. The
    inodes left (new names, hardlinks seen for the first time) are looked up by key."""
    known: dict[tuple[int, bytes], int] = {}
    old: dict[Key, tuple[Any, ...]] = {}
    for did, ents in by_dir.items():
        if did in fresh:
            continue
        fs = next(iter(ents.values()))[0]
        for part in chunks(list(ents), BATCH):
            for r in store.bulk.entry_rows(c, did, fs, part):
                known[(did, bytes(r[0]))] = r[1]
                if r[2] is not None:
                    old[(fs, r[1])] = tuple(r[2:])
    missing: dict[int, list[int]] = defaultdict(list)
    for k in by_key:
        if k not in old:
            missing[k[0]].append(k[1])
    for fs, inos in missing.items():
        for part in chunks(inos, BATCH):
            for r in store.bulk.stat_rows(c, fs, part):
                old[(fs, r[0])] = tuple(r[1:])
    return known, old


def _entry_rows(store: Store, c: Any, scan_id: int, by_dir: dict[int, dict[bytes, Key]],
                known: dict[tuple[int, bytes], int], fresh: set[int]
                ) -> list[tuple[Any, ...]]:
    """The names to write (new, or naming another inode now); those unchanged are
    marked seen here."""
    erows: list[tuple[Any, ...]] = []
    for did, ents in by_dir.items():
        if did in fresh:  # no name of it is known
            erows += [(did, n, k[1], scan_id) for n, k in ents.items()]
            continue
        same: list[bytes] = []
        for n, k in ents.items():
            was = known.get((did, n))
            if was == k[1]:
                same.append(n)
                continue
            erows.append((did, n, k[1], scan_id))
            # a name that now holds another inode may leave the old one without a name
            if was is not None:
                store.orphans_maybe = True
        for part in chunks(same, BATCH):
            store.bulk.touch_entries(c, scan_id, did, part)
    return erows


def _drop_claimed(store: Store, c: Any, keys: list[Key], mine: set[tuple[int, bytes]]) -> None:
    """Where inode numbers are made up at each mount (FAT: no hard links either), a
    known number now held by a name that did not have it names no other file: the
    index's other names of it (files that had it before a remount) are dropped, with
    their directories' digests (else a directory listing as it did would be skipped,
    its file taken for the row's new file)."""
    want = set(keys)
    stale: list[tuple[int, bytes]] = []
    for part in chunks(sorted({k[1] for k in keys}), BATCH):
        stale += [(did, name) for fs, ino, did, name, _seen in store.bulk.names_of_inodes(c, part)
                  if (fs, ino) in want and (did, name) not in mine]
    if stale:
        p = store.db.p
        c.executemany(f"DELETE FROM entries WHERE dir = {p} AND name = {p}", stale)
        c.executemany(f"UPDATE directories SET digest = NULL WHERE id = {p}",
                      [(d,) for d in {d for d, _n in stale}])


def _digests(store: Store, c: Any, scan_id: int, written: list[int],
             digests: Sequence[tuple[bytes, bytes]], made: set[int]) -> None:
    """Store the given listing digests; clear those of other directories written.

    A directory that still has a name this scan did not see (a file removed, or
    not listed under these options) gets no digest: the name is forgotten only by
    the scan's finish, and a digest stored before it (a scan killed in between)
    would have the next scans skip the directory and keep the name for ever. The
    directories `made` since the scan began have only names it wrote."""
    p = store.db.p
    fresh = {d: g for d, g in ((store.dirs.find(path, c), g) for path, g in digests)
             if d is not None}
    for part in chunks([d for d in fresh if d not in made], 500):
        c.execute(f"SELECT DISTINCT dir FROM entries WHERE dir IN ({store.db.marks(len(part))})"
                  f" AND seen < {p}", (*part, scan_id))
        for (d,) in c.fetchall():
            del fresh[int(d)]
    stale = [d for d in written if d not in fresh]
    for part in chunks(stale, 500):
        c.execute(f"UPDATE directories SET digest = NULL WHERE digest IS NOT NULL AND id IN "
                  f"({store.db.marks(len(part))})", part)
    if fresh:
        store.bulk.set_digests(c, list(fresh.items()))


def store_digests(store: Store, c: Any, scan_id: int,
                  digests: Sequence[tuple[bytes, bytes]]) -> None:
    """Store listing digests held back (held.py) past the batch that recorded their
    directories' last files: as _digests would have, had they come with it."""
    _digests(store, c, scan_id, [], digests, store.dirs.made)


def forget_unseen(store: Store, cur: Any, scan_id: int, roots: Sequence[bytes],
                  keep: set[int]) -> int:
    """Delete entries at or below roots not seen in scan_id (except in the
    directories `keep`), then the directories of that subtree left without any
    entry below them. Returns entries deleted."""
    p, gone = store.db.p, 0
    sub = store.dirs.subtree_parents(roots)
    ids = [d for d, _fs, _parent in sub]
    for part in chunks([d for d in ids if d not in keep], 500):
        marks = store.db.marks(len(part))
        # a directory that loses a name the walk did not list (a pass with another
        # min_size or exclude) loses its digest: the next scan must list it again
        cur.execute(f"UPDATE directories SET digest = NULL WHERE digest IS NOT NULL AND id IN "
                    f"({marks}) AND id IN (SELECT dir FROM entries WHERE seen < {p} AND dir "
                    f"IN ({marks}))", (*part, scan_id, *part))
        cur.execute(f"DELETE FROM entries WHERE seen < {p} AND dir IN ({marks})",
                    (scan_id, *part))
        gone += max(int(cur.rowcount or 0), 0)
    for root in roots:
        if store.dirs.find(root) is None:  # a file given as a root
            d, name = split(root)
            did = store.dirs.find(d)
            if did is not None:
                cur.execute(f"DELETE FROM entries WHERE dir = {p} AND name = {p} AND "
                            f"seen < {p}", (did, name, scan_id))
                if cur.rowcount:
                    cur.execute(f"UPDATE directories SET digest = NULL WHERE id = {p}", (did,))
                gone += max(int(cur.rowcount or 0), 0)
    drop_empty(store, cur, ids, {d: parent for d, _fs, parent in sub})
    store.orphans_maybe |= gone > 0
    return gone


def drop_empty(store: Store, cur: Any, ids: list[int], parent: dict[int, int]) -> None:
    """Delete the directories among ids (a subtree; parent: id -> parent id of each)
    with no entry at or below them."""
    full: set[int] = set()
    for part in chunks(ids, 500):
        cur.execute(f"SELECT id FROM directories d WHERE id IN ({store.db.marks(len(part))}) "
                    "AND EXISTS (SELECT 1 FROM entries e WHERE e.dir = d.id)", part)
        full.update(int(r[0]) for r in cur.fetchall())
    keep: set[int] = set()
    for d in full:
        while d in parent and d not in keep:
            keep.add(d)
            d = parent[d]
    drop = [d for d in ids if d not in keep]
    for part in chunks(drop, 500):
        cur.execute(f"DELETE FROM directories WHERE id IN ({store.db.marks(len(part))})", part)
    store.dirs.forget(drop)
