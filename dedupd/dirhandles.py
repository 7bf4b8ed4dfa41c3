"""A batch's directory handles (hardlink batches: dedup/hardlink.py, fsops/link.py,
fsops/swap.py), each directory resolved once through dedupd/handles.py.
"""

from __future__ import annotations

import errno
import os

from dedupd import handles


class Dirs:
    """Directory handles of one batch, each directory resolved once (issue 16: a batch
    touches a few hundred directories but thousands of names).

    A held fd is a handle, not a name: every `parent(path)` of one directory acts on
    the very directory that was resolved first, whatever its path string leads to
    later, and its final name is never followed (the *at calls of Parent). Only the
    directory part of a path is looked up in the cache, and only once. Past `limit`
    open handles a Parent resolves on its own (owned, closed by its close()), so a
    caller must close every Parent it gets, as with Parent(path). close() closes every
    handle (no Parent from before may be used after); later calls resolve afresh.
    """

    def __init__(self, limit: int = 256) -> None:
        self._fds: dict[bytes, int] = {}
        self._limit = limit

    def parent(self, path: bytes) -> handles.Parent:
        dir_, name = os.path.split(path.rstrip(b"/"))
        if not name or name in (b".", b".."):
            raise handles.PathChanged(errno.EINVAL, "no final name", os.fsdecode(path))
        key = dir_ or b"/"
        fd = self._fds.get(key)
        if fd is None:
            if len(self._fds) >= self._limit:
                return handles.Parent(path)
            fd = self._fds[key] = handles.open_dir(key)
        p = handles.Parent.__new__(handles.Parent)
        p.path, p.dir, p.name, p.fd, p.owned = path, dir_, name, fd, False
        return p

    def lstat(self, path: bytes) -> os.stat_result:
        """lstat(path) through the batch's handle of its directory."""
        with self.parent(path) as p:
            return p.lstat()

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)
