"""Whether another user could point a configured path elsewhere.

dedupd resolves a configured root once (realpath) and works beneath it by
handle. That protects everything below the root, not the way to it: a user who
may rename or create entries in a directory on that way (their home, a share
they own) can replace the next level with a symlink before a run, and the run
then works wherever it points, as root. `bent_by` names the first such directory.
"""

from __future__ import annotations

import os
import stat

_MAX_LINKS = 40  # as the kernel's ELOOP limit


def bent_by(path: bytes) -> bytes | None:
    """The first directory on the way to `path` (absolute; symlinks on the way are
    followed and their targets checked alike) in which another user than root (or
    us) may replace the next level: owned by them, or writable by group or others
    without the sticky bit, or sticky while the entry is theirs. None when there is
    none (a level that does not exist ends the check: nothing to bend yet)."""
    me = (0, os.geteuid())
    todo = [p for p in path.split(b"/") if p][::-1]  # a stack: the next name last
    cur, links = b"/", 0
    while todo:
        name = todo.pop()
        if name == b".":
            continue
        if name == b"..":
            cur = os.path.dirname(cur) or b"/"
            continue
        entry = os.path.join(cur, name)
        try:
            dst, est = os.stat(cur), os.lstat(entry)
        except OSError:
            return None
        if dst.st_uid not in me or (dst.st_mode & 0o022 and (
                not dst.st_mode & stat.S_ISVTX or est.st_uid not in me)):
            return cur
        if stat.S_ISLNK(est.st_mode):
            links += 1
            if links > _MAX_LINKS:
                return entry
            target = os.readlink(entry)
            todo += [p for p in target.split(b"/") if p][::-1]
            if target.startswith(b"/"):
                cur = b"/"
            continue
        cur = entry
    return None


def why_bent(path: bytes) -> str | None:
    """The reason, for a config error naming path, that another user could point it
    elsewhere (bent_by); None when none can."""
    d = bent_by(path)
    if d is None:
        return None
    return (f"{os.fsdecode(d)} may be changed by another user, who could point it "
            "elsewhere; use a path whose directories only root can change")
