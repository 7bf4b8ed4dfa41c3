"""st_dev <-> filesystem rows: the one place the index meets device numbers.

Device numbers are not stable names (anonymous devices of subvolumes, datasets,
FUSE and network mounts change with mount order), so nothing in the index stores
them. In memory, files keep carrying the current st_dev, because the runtime
compares it with fstat. FsMap translates at the boundary, per Store (and so per
pass): a device met for the first time is identified through a directory on it
(dedupd.files.fsid) and bound to its `filesystems` row, created on first sight;
a row read back is given the device its filesystem has now.

Provisional filesystems: a migration from schema 2 keeps rows whose device it
could not identify under ident "provisional:<old st_dev>" (stable = 0). The first
pass that identifies a filesystem holding one of their directories, while that
identity has no row yet, renames the provisional row to it: its hashes are kept.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from dedupd import handles
from dedupd.errors import EXIT_CONFIG, DedupdError
from dedupd.files.fsid import (
    FAT_FSTYPES,
    FsIdentity,
    FsIdentityError,
    HostIdentity,
    Identities,
)
from dedupd.index.db import Db, to_s64

PROVISIONAL = "provisional:"


class HostClash(DedupdError):
    """The configured host name belongs to another machine in this database."""

    exit_code = EXIT_CONFIG


class UnknownFilesystem(DedupdError):
    """A filesystem whose identity cannot be determined: nothing is recorded for it."""


class Unreachable(UnknownFilesystem):
    """The path a device was met at is gone (or moved) before it could be identified:
    the caller drops what it had from that device and meets it again later."""


def register_host(db: Db, host: HostIdentity) -> int:
    """The host's id, its row created on first use. Raises HostClash (nothing written)
    when the name is held by another machine-id."""
    p = db.p
    rows = db.rows(f"SELECT id, machine_id FROM hosts WHERE name = {p}", (host.name,))
    if not rows:
        with db.tx() as cur:
            cur.execute(f"INSERT INTO hosts (name, machine_id) VALUES ({p}, {p}) "
                        "ON CONFLICT (name) DO NOTHING", (host.name, host.machine_id))
        rows = db.rows(f"SELECT id, machine_id FROM hosts WHERE name = {p}", (host.name,))
    hid, mid = rows[0]
    if mid != host.machine_id:
        raise HostClash(f"index {db.url}: host name {host.name!r} belongs to the machine "
                        f"with machine-id {mid}, not this one ({host.machine_id}); set another "
                        "[database] host for this machine")
    return int(hid)


class FsMap:
    """Thread-safe map between this host's filesystem rows and current devices."""

    def __init__(self, db: Db, host_id: int) -> None:
        self.db, self.host = db, host_id
        self.ids = Identities()
        self._lock = threading.Lock()
        self._fs: dict[int, int] = {}  # st_dev -> filesystems.id
        self._dev: dict[int, int | None] = {}  # filesystems.id -> st_dev (None: not here)
        # what was identified since the last revalidate(): the rest is re-identified
        # at first use (a Store outlives passes: the daemon's lives for weeks)
        self._dev_ok: set[int] = set()
        self._fs_ok: set[int] = set()
        # devices no filesystem of the index was found on since the last revalidate()
        # (Store._fs_of_dev); a device bound meanwhile leaves it
        self.absent: set[int] = set()
        # filesystems met in this Store whose inode numbers are made up at each
        # mount (FAT_FSTYPES): record_batch trusts a row there only by name
        self.renumbered: set[int] = set()

    def revalidate(self) -> None:
        """A new pass: since the last one a filesystem may have been unmounted and its
        st_dev given to another (anonymous numbers are reused lowest first), or been
        remounted on another st_dev. Each device and filesystem is identified again at
        its first use; mappings stay usable meanwhile (known_fs) for passes under way."""
        with self._lock:
            self.ids = Identities()
            self._dev_ok.clear()
            self._fs_ok.clear()
            self.absent.clear()

    def _map(self, fs: int, dev: int | None) -> None:
        """Bind filesystem fs <-> device dev (None: fs is not reachable now), dropping
        what either was bound to before; the caller holds _lock."""
        old = self._dev.get(fs)
        if old is not None and old != dev:
            self._fs.pop(old, None)
        if dev is not None:
            for f in [f for f, d in self._dev.items() if d == dev and f != fs]:
                del self._dev[f]
            self._fs[dev] = fs
            self._dev_ok.add(dev)
            self.absent.discard(dev)
        self._dev[fs] = dev
        self._fs_ok.add(fs)

    def fs_of(self, dev: int, path: bytes, paths_of: Any = None) -> int:
        """The filesystem id of device `dev`, met at `path` (a file in a directory on it).

        paths_of(directory ids) -> {id: path}: to find a provisional filesystem whose
        names are on dev (claimed: its rows and hashes are kept). Raises UnknownFilesystem."""
        fs = self._fs.get(dev)
        if fs is not None and dev in self._dev_ok:
            return fs
        with self._lock:
            fs = self._fs.get(dev)
            if fs is None or dev not in self._dev_ok:
                ident = self._identify(dev, path)
                fs = self._bind(ident, path, paths_of, dev)
                self._map(fs, dev)
                self._note(fs, ident)
            return fs

    def learn(self, dev: int, ident: FsIdentity) -> int:
        """Bind a device identified elsewhere (by the walk, next to its fd)."""
        with self._lock:
            fs = self._fs.get(dev)
            if fs is None or dev not in self._dev_ok:
                fs = self._bind(ident, ident.mountpoint, None)
                self._map(fs, dev)
                self._note(fs, ident)
            return fs

    def known_fs(self, dev: int) -> int | None:
        return self._fs.get(dev)

    def dev_of(self, fs: int, probe: Any = None) -> int | None:
        """The current st_dev of filesystem `fs`, or None when it is not reachable
        now. probe() -> a path of a directory of fs in the index (tried once)."""
        if fs in self._fs_ok:
            return self._dev.get(fs)
        with self._lock:
            if fs in self._fs_ok:
                return self._dev.get(fs)
            dev = self._find(fs, probe() if probe is not None else None)
            self._map(fs, dev)
            return dev

    def check(self, path: bytes) -> None:
        """Raise UnknownFilesystem when the filesystem holding path (a directory, or a
        file's directory) has no identity; writes nothing. A path that cannot be
        opened is left to the caller's walk to report."""
        d = path if os.path.isdir(path) and not os.path.islink(path) else (
            os.path.dirname(path.rstrip(b"/")) or b"/")
        try:
            fd = handles.open_dir(d)
        except OSError:
            return
        try:
            with self._lock:
                self.ids.of(os.fstat(fd).st_dev, fd)
        except FsIdentityError as e:
            raise UnknownFilesystem(f"cannot identify the filesystem of {os.fsdecode(d)}: "
                                    f"{e}") from None
        finally:
            os.close(fd)

    def _identify(self, dev: int, path: bytes) -> FsIdentity:
        """Identify dev through the directory holding the file at path."""
        d = os.path.dirname(path.rstrip(b"/")) or b"/"
        try:
            fd = handles.open_dir(d)
        except OSError as e:
            raise Unreachable(f"cannot identify the filesystem of {os.fsdecode(path)}: "
                              f"{e.strerror or e}") from None
        try:
            if os.fstat(fd).st_dev != dev:
                raise Unreachable(f"{os.fsdecode(d)} moved to another filesystem "
                                        "while it was being identified")
            return self.ids.of(dev, fd)
        except FsIdentityError as e:
            raise UnknownFilesystem(f"cannot identify the filesystem of {os.fsdecode(d)}: "
                                    f"{e}") from None
        finally:
            os.close(fd)

    def _bind(self, ident: FsIdentity, path: bytes, paths_of: Any, dev: int = -1) -> int:
        p = self.db.p
        with self.db.tx() as cur:
            cur.execute(f"SELECT id FROM filesystems WHERE host = {p} AND ident = {p}",
                        (self.host, ident.ident))
            row = cur.fetchone()
            if row is None and paths_of is not None:
                row = self._provisional(cur, paths_of, dev)
            if row is None:
                cur.execute(f"INSERT INTO filesystems (host, ident, fstype, mountpoint, stable) "
                            f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (host, ident) DO "
                            "NOTHING RETURNING id", (self.host, ident.ident, ident.fstype,
                                                     ident.mountpoint, int(ident.stable)))
                if (made := cur.fetchone()) is not None:
                    return int(made[0])
                # made meanwhile by another connection of this host (PostgreSQL: the
                # INSERT waited for its commit, which this new statement sees)
                cur.execute(f"SELECT id FROM filesystems WHERE host = {p} AND ident = {p}",
                            (self.host, ident.ident))
                row = cur.fetchone()
            cur.execute(f"UPDATE filesystems SET ident = {p}, fstype = {p}, mountpoint = {p}, "
                        f"stable = {p} WHERE id = {p}", (ident.ident, ident.fstype,
                                                         ident.mountpoint, int(ident.stable),
                                                         row[0]))
            return int(row[0])

    def _provisional(self, cur: Any, paths_of: Any, dev: int) -> Any:
        """The provisional filesystem row whose recorded names, where they still are,
        name the recorded inodes (same ino, size and mtime) on device dev: the disk
        that was away during the upgrade, not the filesystem of the empty mount point
        under it. paths_of(directory ids) -> {id: path}."""
        p = self.db.p
        cur.execute(f"SELECT id FROM filesystems WHERE host = {p} AND ident LIKE {p} "
                    "ORDER BY id", (self.host, PROVISIONAL + "%"))
        for (fid,) in cur.fetchall():
            cur.execute(f"SELECT e.dir, e.name, i.ino, i.size, i.mtime_ns FROM directories d "
                        "JOIN entries e ON e.dir = d.id JOIN inodes i ON i.fs = d.fs AND "
                        f"i.ino = e.ino WHERE d.fs = {p} LIMIT 16", (fid,))
            names = cur.fetchall()
            dirs = paths_of({int(r[0]) for r in names})
            for did, name, ino, size, mtime_ns in names:
                if int(did) not in dirs:
                    continue
                try:
                    st = handles.lstat(dirs[int(did)].rstrip(b"/") + b"/" + bytes(name))
                except OSError:
                    continue
                if (st.st_dev, to_s64(st.st_ino), st.st_size, st.st_mtime_ns) == (
                        dev, ino, size, mtime_ns):
                    return (fid,)
        return None

    def _find(self, fs: int, path: bytes | None) -> int | None:
        rows = self.db.rows(f"SELECT ident FROM filesystems WHERE id = {self.db.p}", (fs,))
        if not rows or path is None:
            return None
        try:
            fd = handles.open_dir(path)
        except OSError:
            return None
        try:
            dev = os.fstat(fd).st_dev
            known = self.ids.known(dev)
            try:
                ident = known if known is not None else self.ids.of(dev, fd)
            except FsIdentityError:
                return None
        finally:
            os.close(fd)
        if ident.ident != rows[0][0]:
            return None
        self._note(fs, ident)
        return dev

    def _note(self, fs: int, ident: FsIdentity) -> None:
        """What the index must know of fs beyond its id (see `renumbered`)."""
        if ident.fstype in FAT_FSTYPES:
            self.renumbered.add(fs)
