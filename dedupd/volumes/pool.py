"""Kind "pool": a mergerfs pool, deduplicated across its branches.

The pass walks the branches (not the FUSE view), so every file is seen with
its real device and inode. Groups go to dedup/crossdrive.py: duplicates on the
kept file's branch become hardlinks, duplicates on other branches move onto
the kept branch as hardlinks (link first, delete second). The pool view keeps
every path with the same bytes. Dry run unless mode = "apply".
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from dedupd.dedup.crossdrive import PoolPolicy, link_pool_group, rel_to
from dedupd.scan.scanner import DupGroup
from dedupd.scan.walk import normalize_roots
from dedupd.volumes import Step, register
from dedupd.volumes.plain import LinkPass


class PoolPass(LinkPass):
    @property
    def roots(self) -> list[bytes]:
        return normalize_roots(self.vol.branches)

    def pool_policy(self) -> PoolPolicy:
        root = os.fsencode(self.vol.pool_root or self.vol.path)
        q = self.vol.quarantine_dir
        qrel = None
        if q is not None:
            # Quarantine must stay on each copy's own drive: a pool-view path
            # becomes the same relative path on every branch.
            qb = os.fsencode(q)
            qrel = rel_to(qb, root) if qb.startswith(root.rstrip(b"/") + b"/") else \
                qb.lstrip(b"/")
        return PoolPolicy(self.vol.name, root, tuple(os.path.realpath(os.fsencode(b))
                                                     for b in self.vol.branches),
                          tuple(os.fsencode(p) for p in self.vol.primary_paths),
                          self.vol.link_primary_pairs, qrel)

    def quarantine_dirs(self) -> list[bytes]:
        qrel = self.pool_policy().quarantine_rel
        return [] if qrel is None else [os.path.join(b, qrel) for b in self.roots]

    def act(self, group: DupGroup) -> Iterator[Step]:
        res = link_pool_group(None if self.dry else self.journal, group, self.pool_policy(),
                              self.dry)
        self.absorb(res)
        yield Step("deduping", f"{len(group.files)} files of {group.size} bytes")


register("pool")(PoolPass)
