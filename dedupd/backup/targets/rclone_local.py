"""A remote of rclone's `local` backend, served without rclone processes.

The same files `rclone lsjson`/`cat`/`deletefile`/`purge` would list, read and
delete there (keys are paths under the remote's root directory), at a
fraction of the cost: no process per request, SHA-256 by OpenSSL. A body in
memory (a manifest) is written under a temp name and renamed. Chunks are
uploaded through rclone (rclone.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
from pathlib import Path
from typing import IO

from dedupd.backup.targets import ObjectInfo, TargetError
from dedupd.fsops.whole import replace_file

READ = 1024 * 1024


def local_get(key: str, path: Path, out: IO[bytes]) -> None:
    try:
        with path.open("rb") as f:
            while b := f.read(READ):
                out.write(b)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise TargetError(f"{path}: no such object ({key})") from None
    except OSError as e:
        raise TargetError(f"{path}: {e.strerror or e}") from None


def local_list(root: Path, prefix: str) -> list[ObjectInfo]:
    """What `rclone lsjson -R --files-only` lists of a local remote: regular files
    (rclone skips symlinks), keys relative to the remote's root. A directory that
    cannot be read is an error, never a shorter listing: retention deletes chunk
    folders that no listed manifest owns."""
    folder = prefix.rpartition("/")[0]

    def fail(e: OSError) -> None:
        if not isinstance(e, FileNotFoundError):
            raise TargetError(f"{e.filename}: {e.strerror or e}")

    out: list[ObjectInfo] = []
    for dirpath, _dirs, files in os.walk(root / folder if folder else root, onerror=fail):
        for name in files:
            p = Path(dirpath, name)
            try:
                st = p.lstat()
            except FileNotFoundError:
                continue  # deleted since the directory was read
            key = p.relative_to(root).as_posix()
            if stat.S_ISREG(st.st_mode) and key.startswith(prefix):
                out.append(ObjectInfo(key, st.st_size, None, None, "STANDARD"))
    return out


def _private_dirs(d: Path) -> None:
    """mkdir -p d, each missing level 0700 (mkdir(parents=True) makes the parents with
    the umask's modes)."""
    for p in [*reversed(d.parents), d]:
        if not p.is_dir():
            p.mkdir(0o700, exist_ok=True)


def local_put(key: str, path: Path, body: io.BytesIO, size: int) -> None:
    """Write a body in memory (a manifest, the last object of a backup) under a temp
    name and rename it to path, then sync the filesystem. rclone's local backend
    syncs nothing, so this one syncfs is what makes the backup's chunks and its
    manifest durable before the run records it complete and prunes older ones (a
    power cut must not leave an empty newest manifest with its elders deleted)."""
    data = body.getvalue()
    if len(data) != size:
        raise TargetError(f"{key}: body of {len(data)} bytes, {size} declared")
    try:
        _private_dirs(path.parent)
        # private as rclone's files (rclone.PRIVATE); the temp name ends in no object
        # suffix a reader looks for (.json, .zst)
        replace_file(path, data, 0o600)
        _sync_dir_filesystem(path.parent)
    except OSError as e:
        raise TargetError(f"{path}: {e.strerror or e}") from None


def _sync_dir_filesystem(folder: Path) -> None:
    """syncfs(2) of folder's filesystem; OSError when it fails (a failed sync must never
    let the manifest, the commit marker, count as durable). fsops.durable, not
    fsops.copy: that import (and the hashing side it brings) cost ~15 ms after every
    backup's stream."""
    from dedupd.fsops.durable import sync_fd_filesystem

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sync_fd_filesystem(fd)
    finally:
        os.close(fd)


def local_delete(path: Path) -> None:
    """Delete one object of a local remote; a missing one is no error (as for
    `rclone deletefile`: deleting is idempotent)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise TargetError(f"{path}: {e.strerror or e}") from None


def local_purge(path: Path) -> None:
    """Delete a folder of a local remote and all in it (symlinks are removed, never
    followed); a missing folder is no error."""

    def fail(_fn: object, p: str, exc: tuple[type[BaseException], BaseException, object]
             ) -> None:
        if not isinstance(exc[1], FileNotFoundError):
            raise TargetError(f"{p}: {getattr(exc[1], 'strerror', None) or exc[1]}")

    shutil.rmtree(path, onerror=fail)


def local_head(key: str, path: Path) -> ObjectInfo | None:
    # One buffer read into again and again, no bytes object per block: this reads
    # back every chunk of a backup, and costs ~20% less CPU than read() does.
    h = hashlib.sha256()
    buf = bytearray(READ)
    view = memoryview(buf)
    size = 0
    try:
        with path.open("rb", buffering=0) as f:
            while n := f.readinto(view):
                h.update(view[:n])
                size += n
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as e:
        raise TargetError(f"{path}: {e.strerror or e}") from None
    return ObjectInfo(key, size, h.hexdigest(), None, "STANDARD")
