"""The swap of one name of a hardlink batch (dedup/link_exec.py): a duplicate's
name replaced by a link to the kept file, step by step, each step a separate call
so that the caller can journal and look between them. The one-step primitives it
is made of live in fsops/link.py, renameat2 and the hold in fsops/names.py.
"""

from __future__ import annotations

import os
import stat

from dedupd import dirhandles, testpoints
from dedupd.fsops.link import Pair, hold_name, link_in, unlink_in
from dedupd.fsops.names import exchange_in, hold_in, put_back, rename_noreplace, renameat2
from dedupd.fsops.release import Releaser


class Swap:
    """One name of a hardlink batch replaced by a link to the kept file, on directory
    handles resolved once, after the first mutate point: the kept file's directory
    and the duplicate's (which also holds the temp and hold names). Steps, in order:
    link_temp -> (the caller's last look at the duplicate) -> exchange -> unlink_temp;
    where names cannot be exchanged: hold -> (the caller checks the held file) ->
    place (or link_name, unlink_temp) -> unlink_held, or give_back. Nothing is made
    durable here: the batch syncs the filesystem.
    dirs: the batch's directory handles (each directory resolved once per batch).
    release: the batch's Releaser: the duplicate's inode, unlinked, is let go of there.
    """

    def __init__(self, keep: bytes, tmp: bytes, dup: bytes,
                 dirs: dirhandles.Dirs | None = None, release: Releaser | None = None) -> None:
        testpoints.at("mutate", tmp)
        self.release = release
        self.pair = Pair(keep, tmp, dirs)
        try:
            self.tmp = self.pair.b
            self.dup = self.tmp.sibling(dup)
            self.held = self.tmp.sibling(hold_name(tmp))
        except BaseException:
            self.pair.__exit__()
            raise

    def __enter__(self) -> Swap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pair.__exit__()

    def link_temp(self, expect: tuple[int, int]) -> None:
        """link_exact(keep, tmp, expect=...) on the held handles."""
        link_in(self.pair.a, self.tmp, expect)

    def lstat_keep(self) -> os.stat_result:
        return self.pair.a.lstat()

    def lstat_dup(self) -> os.stat_result:
        return self.dup.lstat()

    def lstat_temp(self) -> os.stat_result:
        return self.tmp.lstat()

    def exchange(self) -> bool:
        """Swap the temp name and the duplicate's; False where unsupported."""
        fn = renameat2()
        if fn is None:
            return False
        testpoints.at("mutate", self.dup.path)
        return exchange_in(fn, self.tmp, self.dup)

    def others_may_take_name(self) -> bool:
        """The duplicate's directory has the sticky bit and others may write it (a
        shared 1777 directory): there another user may create a name that is missing
        but not replace a file, so the held swap's missing instant would hand them
        the name (hold refuses to open it)."""
        mode = os.fstat(self.dup.fd).st_mode
        return bool(mode & stat.S_ISVTX and mode & 0o022)

    def hold(self) -> os.stat_result:
        """Without exchange, first: the duplicate's name moves to the hold name
        (hold_name of the temp name, so the journal knows it), taking whatever the
        name holds at that instant (an editor's save, too); returns the held entry's
        lstat, for the caller to check. The name is missing until place or give_back.
        A file already at the hold name is never replaced where RENAME_NOREPLACE works
        (FileExistsError)."""
        testpoints.at("mutate", self.dup.path)
        return hold_in(self.dup, self.held)

    def place(self) -> bool | None:
        """After hold: the temp name (the kept inode) becomes the duplicate's name,
        never over a file made there meanwhile (RENAME_NOREPLACE). True if done, False
        if a file is there now, None where unsupported (then link_name, unlink_temp)."""
        testpoints.at("mutate", self.dup.path)
        return rename_noreplace(self.tmp, self.dup)

    def link_name(self) -> bool:
        """place without RENAME_NOREPLACE: the temp name's inode linked at the
        duplicate's name; False if a file was made there meanwhile (EEXIST)."""
        testpoints.at("mutate", self.dup.path)
        try:
            os.link(self.tmp.name, self.dup.name, src_dir_fd=self.tmp.fd,
                    dst_dir_fd=self.dup.fd, follow_symlinks=False)
        except FileExistsError:
            return False
        return True

    def unlink_held(self, dev: int, ino: int) -> bool:
        """The hold name removed if it is (dev, ino), the duplicate checked there."""
        testpoints.at("mutate", self.held.path)
        return unlink_in(self.held, dev, ino, self.release)

    def give_back(self) -> bool:
        """The held entry back under the duplicate's name, never over a file made
        there meanwhile (True); else it stays under the hold name (False)."""
        testpoints.at("mutate", self.dup.path)
        return put_back(self.held, self.dup)

    def unlink_temp(self, dev: int, ino: int) -> bool:
        """unlink_if_inode(tmp, dev, ino) on the held handle."""
        testpoints.at("mutate", self.tmp.path)
        return unlink_in(self.tmp, dev, ino, self.release)
