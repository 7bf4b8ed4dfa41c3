"""A verified staged copy's real name (fsops/copy.py): linked, never over a name that
exists; renamed where the filesystem has no hard links."""

from __future__ import annotations

import errno
import os

from dedupd import testpoints
from dedupd.fsops import anon, names
from dedupd.fsops.source import CopyError

_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)


def place_named(tdir: int, tname: bytes, ddir: int, dname: bytes, dest: bytes) -> None:
    """Give the temp copy its real name, both names relative to their directory handles."""
    testpoints.at("mutate", dest)
    try:
        os.link(tname, dname, src_dir_fd=tdir, dst_dir_fd=ddir, follow_symlinks=False)
    except FileExistsError:
        raise CopyError("exists", "destination appeared during the copy") from None
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        # no hard links (FAT): a rename that never replaces where the filesystem can;
        # else a check then a rename, which a file made at the name in between loses to
        moved = names.rename_noreplace_at(tdir, tname, ddir, dname)
        if moved:
            return
        if moved is None:
            try:
                os.stat(dname, dir_fd=ddir, follow_symlinks=False)
            except FileNotFoundError:
                os.rename(tname, dname, src_dir_fd=tdir, dst_dir_fd=ddir)
                return
        raise CopyError("exists", "destination appeared during the copy") from None
    os.unlink(tname, dir_fd=tdir)


def place_anon(tfd: int, ddir: int, dname: bytes, dest: bytes) -> None:
    """Give the anonymous copy its real name (never over an existing one)."""
    testpoints.at("mutate", dest)
    try:
        anon.link(tfd, ddir, dname)
    except FileExistsError:
        raise CopyError("exists", "destination appeared during the copy") from None
