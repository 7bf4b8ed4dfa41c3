"""Dedupe one group of identical files by sharing extents (BTRFS, XFS reflink).

Order of a group: FIEMAP every member (and confirm it is still the indexed
inode) -> plan (reference, destinations, batches) -> skip destinations that
already share every extent with the reference -> dedupe (kernel byte-compares)
-> FIEMAP again and mark a destination done only once it shares the
reference's extents. Read-only snapshot files are never destinations.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dedupd import fiemap, handles, testpoints
from dedupd.dedup import extent
from dedupd.dedup.killpoint import StepHook
from dedupd.dedup.planner import Member, plan_group
from dedupd.files.counters import Counters
from dedupd.hashing import FileChanged, check_unchanged
from dedupd.index import extents as ix
from dedupd.index.store import HashUpdate, IndexedFile, Store
from dedupd.proc import ProcError

_RO = handles.FILE_FLAGS | getattr(os, "O_NOATIME", 0)
DUPEREMOVE_QUEUE = 2000  # files per duperemove run
STATE_BATCH = 500  # buffered done marks / references per index transaction


@dataclass
class _Open:
    """A member checked against the index, with its extent map (fd already closed:
    groups may be larger than the open-files limit)."""

    file: IndexedFile
    exts: list[fiemap.Extent]


@dataclass
class _Queued:
    ref: IndexedFile
    dests: list[IndexedFile]
    full: bytes


@dataclass
class ExtentDeduper:
    """Carries out extent dedupe for one pass; counters and actions go to the pass."""

    store: Store
    c: Counters
    batch_size: int = 120
    backend: str = "ioctl"
    dry_run: bool = False
    is_readonly: Callable[[IndexedFile], bool] = lambda f: False
    actions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)
    queue: list[_Queued] = field(default_factory=list)
    retry_sizes: set[int] = field(default_factory=set)  # to hash again next pass
    refs: list[tuple[int, bytes, tuple[int, int]]] = field(default_factory=list)
    done_buf: list[tuple[tuple[int, int], bytes, tuple[int, int], int]] = field(
        default_factory=list)
    hash_buf: dict[tuple[int, int], HashUpdate] = field(default_factory=dict)
    _fresh: bool | None = None  # no group state in the index at all (a first pass)
    # The journal's kill-point test hook: one step per dedupe call (ioctl batch or
    # duperemove run), so the contract tests can kill -9 right after one.
    step: StepHook = field(default_factory=StepHook)

    def dedupe_group(self, size: int, files: Sequence[IndexedFile],
                     full: bytes | None = None, updates: Sequence[HashUpdate] = ()) -> None:
        """Dedupe one group of files with identical content hash `full` (looked up when
        not given). `updates` are the members' new hashes, written in order with this
        deduper's own. State writes are buffered: call flush() at the end of the pass."""
        self._learn(updates)
        full = full or files[0].full or ix.full_hash(self.store, files[0].key)
        if full is None or len(files) < 2:
            return
        opened = self._open_all(files)
        if len(opened) >= 2:
            self.c.add("groups")
            self._dedupe_opened(size, full, opened)

    def _learn(self, updates: Sequence[HashUpdate]) -> None:
        for u in updates:
            self.hash_buf[(u.dev, u.ino)] = u

    def _open_all(self, files: Sequence[IndexedFile]) -> dict[tuple[int, int], _Open]:
        out: dict[tuple[int, int], _Open] = {}
        for f in files:
            fd = self._open_checked(f)
            if fd is None:
                continue
            try:
                out[f.key] = _Open(f, fiemap.extents(fd))
            except OSError as e:
                self.c.add("errors")
                self._problem(f.path, "error", e)
            finally:
                os.close(fd)
        return out

    def _open_checked(self, f: IndexedFile) -> int | None:
        """Open read-only and confirm it is still the indexed, unchanged inode."""
        testpoints.at("read.open", f.path)
        try:
            try:
                fd = handles.open_at(f.path, _RO)
            except PermissionError:
                fd = handles.open_at(f.path, _RO & ~getattr(os, "O_NOATIME", 0))
        except OSError as e:
            reason = "vanished" if e.errno == errno.ENOENT else "error"
            self._problem(f.path, e.reason if isinstance(e, handles.PathChanged) else reason, e)
            return None
        return self._still_indexed(fd, f)

    def _member(self, k: tuple[int, int], o: _Open, remembered: tuple[int, int] | None,
                done: dict[tuple[int, int], tuple[bytes, tuple[int, int]]],
                full: bytes) -> Member:
        return Member(k, o.file.path, o.file.mtime_ns, self.is_readonly(o.file),
                      fiemap.any_shared(o.exts),
                      k in done and done[k][0] == full and done[k][1] == remembered)

    def _group_state(self, size: int, full: bytes, keys: Sequence[tuple[int, int]]
                     ) -> tuple[tuple[int, int] | None, dict[tuple[int, int],
                                                          tuple[bytes, tuple[int, int]]]]:
        if self._fresh is None:  # one query per pass instead of one per group
            self._fresh = not ix.has_group_state(self.store)
        return (None, {}) if self._fresh else ix.group_state(self.store, size, full, keys)

    def _dedupe_opened(self, size: int, full: bytes,
                       opened: dict[tuple[int, int], _Open]) -> None:
        remembered, done = self._group_state(size, full, list(opened))
        members = [self._member(k, o, remembered, done, full) for k, o in opened.items()]
        plan = plan_group(members, self.batch_size, remembered)
        if plan is None:
            return
        if plan.reference.key != remembered and not self.dry_run:
            self.refs.append((size, full, plan.reference.key))
        self.c.add("skips_done", len(plan.skipped_done))
        self.c.add("skips_readonly", len(plan.skipped_readonly))
        ref = opened[plan.reference.key]
        todo, shared = [], []
        for m in plan.destinations:
            if fiemap.same_extents(ref.exts, opened[m.key].exts):
                shared.append(m)
            else:
                todo.append(m)
        self.c.add("skips_already_shared", len(shared))
        if not self.dry_run:
            self._done([(m.key, full, ref.file.key, size) for m in shared])
        if todo:
            self._act(size, full, ref, [opened[m.key] for m in todo])

    def _act(self, size: int, full: bytes, ref: _Open, dests: list[_Open]) -> None:
        action = {"action": "dedupe", "size": size, "reference": _show(ref.file.path),
                  "paths": [_show(d.file.path) for d in dests]}
        self.actions.append(action)
        self.c.add("tries", len(dests))
        if self.dry_run:
            return
        if self.backend == "duperemove" and not any(
                b"\n" in f.file.path for f in [ref, *dests]):
            self.queue.append(_Queued(ref.file, [d.file for d in dests], full))
            if sum(len(q.dests) + 1 for q in self.queue) >= DUPEREMOVE_QUEUE:
                self._run_duperemove()
            return
        n = max(1, min(self.batch_size, extent.KERNEL_MAX_DESTS))
        for k in range(0, len(dests), n):
            self._ioctl_batch(size, full, ref, dests[k:k + n])

    def _ioctl_batch(self, size: int, full: bytes, ref: _Open, dests: list[_Open]) -> None:
        src = self._open_checked(ref.file)
        if src is None:
            return
        fds: dict[int, _Open] = {}
        try:
            for d in dests:
                fd = self._open_dest(d.file)
                if fd is not None:
                    fds[fd] = d
            if not fds:
                return
            results = extent.dedupe_fds(src, size, list(fds))
            self.c.add("dedupe_calls")
            self.step("dedupe")
            ok = []
            for r in results:
                d = fds[r.fd]
                if r.status == "ok":
                    self.c.add("bytes_deduped", r.bytes_deduped)
                    ok.append((r.fd, d.file))
                else:
                    self._failed(d.file, r.status, r.detail)
            self._confirm_fds(size, full, (src, ref.file), ok)
        except OSError as e:
            self.c.add("errors")
            self._problem(ref.file.path, "error", e)
        finally:
            for fd in [src, *fds]:
                os.close(fd)

    def _still_indexed(self, fd: int, f: IndexedFile) -> int | None:
        """fd if it is still the indexed, unchanged inode; else close it and say why."""
        try:
            check_unchanged(fd, f)
        except (FileChanged, OSError) as e:
            os.close(fd)
            self.c.add("skips_changed")
            self._problem(f.path, "changed", e)
            return None
        return fd

    def _open_dest(self, f: IndexedFile) -> int | None:
        """Open a destination for the dedupe and confirm it is still the indexed file."""
        try:
            fd = extent.open_dest(f.path)
        except OSError as e:
            reason = "readonly" if e.errno == errno.EROFS else "error"
            self.c.add(f"skips_{reason}")
            self._problem(f.path, reason, e)
            return None
        return self._still_indexed(fd, f)

    def _failed(self, f: IndexedFile, status: str, detail: str) -> None:
        if status == "differs":
            # The index was wrong (changed after hashing, or a hash collision):
            # drop its hashes so the next pass reads it again.
            self.c.add("misses_differs")
            self._learn([HashUpdate(f.dev, f.ino, None, None)])
            self.retry_sizes.add(f.size)
            self._problem(f.path, "differs", "content differs from the reference; not merged")
        else:
            self.c.add("errors")
            self._problem(f.path, "error", detail)

    def _still_there(self, g: _Queued) -> _Queued | None:
        def there(f: IndexedFile) -> bool:
            try:
                st = handles.lstat(f.path)
            except OSError as e:
                self._problem(f.path, "vanished", e)  # PathChanged maps to path_changed
                return False
            if (st.st_dev, st.st_ino) != f.key:
                self._problem(f.path, "changed", "replaced before duperemove ran")
                return False
            return True

        if not there(g.ref):
            return None
        dests = [d for d in g.dests if there(d)]
        return _Queued(g.ref, dests, g.full) if dests else None

    def _confirm(self, size: int, full: bytes, ref: IndexedFile,
                 dests: Sequence[IndexedFile]) -> None:
        """FIEMAP after the dedupe: only files now sharing the reference's extents are done."""
        try:
            ref_exts = _extents_of(ref.path)
        except OSError as e:
            self._problem(ref.path, "error", e)
            return
        rows = []
        for d in dests:
            try:
                same = fiemap.same_extents(ref_exts, _extents_of(d.path))
            except OSError as e:
                self._problem(d.path, "error", e)
                continue
            if same:
                self.c.add("hits")
                rows.append((d.key, full, ref.key, size))
            else:
                self.c.add("misses_not_shared")
        self._done(rows)

    def _confirm_fds(self, size: int, full: bytes, ref: tuple[int, IndexedFile],
                     dests: Sequence[tuple[int, IndexedFile]]) -> None:
        """_confirm on the descriptors the dedupe used (no path lookups, no reopening)."""
        ref_exts = fiemap.extents(ref[0])
        rows = []
        for fd, d in dests:
            if fiemap.same_extents(ref_exts, fiemap.extents(fd)):
                self.c.add("hits")
                rows.append((d.key, full, ref[1].key, size))
            else:
                self.c.add("misses_not_shared")
        self._done(rows)

    def _done(self, rows: list[tuple[tuple[int, int], bytes, tuple[int, int], int]]) -> None:
        self.done_buf.extend(rows)
        if len(self.done_buf) + len(self.refs) + len(self.hash_buf) >= STATE_BATCH:
            self.save_state()

    def save_state(self) -> None:
        """Write buffered references and done marks (one transaction each).

        Losing them (kill -9) is harmless: the next pass finds the same files
        sharing extents with FIEMAP and marks them then.
        """
        refs, self.refs = self.refs, []
        done, self.done_buf = self.done_buf, []
        hashes, self.hash_buf = list(self.hash_buf.values()), {}
        self.store.save_hashes(hashes)
        ix.set_refs(self.store, refs)
        ix.mark_done(self.store, done)

    def flush(self) -> None:
        """Run queued duperemove work, then write the buffered state. End of a pass."""
        self._run_duperemove()
        self.save_state()

    def _run_duperemove(self) -> None:
        """Run queued groups through duperemove (one process, groups on stdin)."""
        q, self.queue = self.queue, []
        # duperemove opens path strings itself: hand it only paths that still lead,
        # by handle, to the inode that was hashed (docs/safety.md, known limits).
        q = [g for g in (self._still_there(g) for g in q) if g is not None]
        if not q:
            return
        try:
            # duperemove dedupes at most ~120 files of a group against one source;
            # split big groups so every chunk repeats the reference first.
            n = max(1, min(self.batch_size, extent.KERNEL_MAX_DESTS) - 1)
            extent.duperemove([[g.ref.path, *[d.path for d in g.dests[k:k + n]]]
                               for g in q for k in range(0, len(g.dests), n)])
            self.c.add("dedupe_calls")
            self.step("duperemove")
        except (ProcError, ValueError) as e:
            self.c.add("errors")
            self.problems.append({"path": "", "reason": "error", "detail": f"duperemove: {e}"})
        for g in q:
            self._confirm(g.dests[0].size, g.full, g.ref, g.dests)

    def _problem(self, path: bytes, reason: str, detail: object) -> None:
        if isinstance(detail, handles.PathChanged):
            reason = detail.reason  # refused, never followed (docs/safety.md)
        elif isinstance(detail, FileNotFoundError):
            reason = "vanished"
        text = detail.strerror if isinstance(detail, OSError) and detail.strerror else str(detail)
        self.problems.append({"path": os.fsdecode(path), "reason": reason, "detail": text})


def _extents_of(path: bytes) -> list[fiemap.Extent]:
    fd = handles.open_at(path, _RO)
    try:
        return fiemap.extents(fd)
    finally:
        os.close(fd)


def _show(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")
