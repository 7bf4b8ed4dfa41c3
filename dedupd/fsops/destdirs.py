"""Handles a batch of verified copies works through (fsops/copy.py).

A batch's creates, links and unlinks are relative to handles of their target
directories, each made (mkdir -p, by handle) and opened once; each staged file
and its source stay open from the copy to the placing (sync, read-back, stat
and the source's unchanged-check go through them: nothing is opened by name
twice). The directory handles may outlive a batch (DirCache): a layout puts
batch after batch of copies in the same few directories (the generated tree's
import opened its directories 2,700 times in 42 batches, walking each path
from its anchor: 0.4 s of the copy worker's time).
"""

from __future__ import annotations

import os
import resource
from collections import OrderedDict

from dedupd import handles
from dedupd.fsops import anon
from dedupd.fsops import link as link_ops


class DirCache:
    """Directory handles, each made and opened once, the most recently used kept
    by trim() (call it between batches: a handle is never closed while a caller
    holds it). With sync False the new levels are not fsynced one by one: the
    caller syncs the filesystem (fsops.copy.sync_batch) before any name in them is
    placed. The archive is the run's own (locked, its owner checked): a handle kept
    across batches names the directory the path named when it was opened. One
    thread's."""

    def __init__(self, sync: bool = True, keep: int = 0) -> None:
        self._fds: OrderedDict[bytes, int] = OrderedDict()
        self._devs: dict[bytes, int] = {}  # each directory's filesystem (anon.open_in)
        self._sync, self.keep = sync, keep

    def fd(self, path: bytes) -> int:
        fd = self._fds.get(path)
        if fd is None:
            make_dirs(path, sync=self._sync)
            fd = self._fds[path] = handles.open_dir(path)
        else:
            self._fds.move_to_end(path)
        return fd

    def dev(self, path: bytes) -> int:
        dev = self._devs.get(path)
        if dev is None:
            dev = self._devs[path] = os.fstat(self.fd(path)).st_dev
        return dev

    def trim(self) -> None:
        """Close the least recently used handles beyond keep."""
        while len(self._fds) > self.keep:
            path, fd = self._fds.popitem(last=False)
            self._devs.pop(path, None)
            os.close(fd)

    def close(self) -> None:
        self.keep = 0
        self.trim()


class DestDirs:
    """A batch's handles (module docstring): its directories' (its own, or a
    DirCache shared by batches) and its staged files' and their sources'; close()
    when the batch is done closes whatever is left of its own. Not thread-safe.
    With synced_later the new levels are not fsynced one by one (DirCache)."""

    def __init__(self, synced_later: bool = False, dirs: DirCache | None = None) -> None:
        self._own = dirs is None
        self._dirs = DirCache(sync=not synced_later) if dirs is None else dirs
        self._tmp: dict[bytes, int] = {}
        self._src: dict[bytes, int] = {}  # the source each temp file was copied from

    def fd(self, path: bytes) -> int:
        return self._dirs.fd(path)

    def anon(self, path: bytes) -> int | None:
        """An anonymous file in directory path (fsops/anon.py), None where it cannot be."""
        return anon.open_in(self._dirs.fd(path), self._dirs.dev(path))

    def keep(self, tmp: bytes, fd: int, src_fd: int) -> None:
        """Hold a temp file's handle and its source's (-1: none, re-opened to check)."""
        self._tmp[tmp] = fd
        if src_fd >= 0:
            self._src[tmp] = src_fd

    def tmp_fd(self, tmp: bytes) -> int | None:
        return self._tmp.get(tmp)

    def src_fd(self, tmp: bytes) -> int | None:
        return self._src.get(tmp)

    def release(self, tmp: bytes) -> None:
        for held in (self._tmp, self._src):
            fd = held.pop(tmp, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        for fd in (*self._tmp.values(), *self._src.values()):
            os.close(fd)
        self._tmp, self._src = {}, {}
        if self._own:
            self._dirs.close()

    def __enter__(self) -> DestDirs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def kept_dirs() -> int:
    """Directory handles a DirCache of a run's batches keeps between batches: the most
    recent, at most a 48th of the open-file limit (the generated bench tree's import has
    120 directories), no floor above that but 2 (one of 8 copies failed under `ulimit
    -n` 32 and 36 with more)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 16
    return max(2, min(256, soft // 48))


def make_dirs(path: bytes, sync: bool = True) -> None:
    """mkdir -p (0755), by handle, fsyncing each parent whose entry we created (unless
    the caller syncs the filesystem) so the tree survives a crash; a level that is a
    symlink is refused (PathChanged)."""
    link_ops.make_dirs(os.path.abspath(path), 0o755, sync=sync)
