"""Generate file trees whose true duplicate groups are known.

Used by the tests (as ground truth next to the jdupes oracle) and by the
benchmarks. Content is made from a seeded RNG, so a tree is reproducible.
Truth is kept at the inode level: a group is a set of (dev, ino), because
hardlinks to one inode are one file, never duplicates of each other.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Tree:
    root: Path
    groups: list[list[bytes]] = field(default_factory=list)  # paths, one per inode
    files: list[bytes] = field(default_factory=list)  # every regular file path
    unreadable: list[bytes] = field(default_factory=list)

    def truth(self) -> set[frozenset[tuple[int, int]]]:
        return {frozenset(_key(p) for p in g) for g in self.groups}


def _key(p: bytes) -> tuple[int, int]:
    st = os.lstat(p)
    return (st.st_dev, st.st_ino)


def as_inode_groups(groups: list[list[bytes]]) -> set[frozenset[tuple[int, int]]]:
    return {frozenset(_key(p) for p in g) for g in groups}


class Builder:
    def __init__(self, root: Path, seed: int = 1) -> None:
        self.tree = Tree(root)
        self.rng = random.Random(seed)
        self.n = 0
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: bytes | str | None = None, sub: str = "") -> bytes:
        self.n += 1
        d = os.path.join(os.fsencode(self.tree.root), os.fsencode(sub)) if sub else os.fsencode(
            self.tree.root)
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, os.fsencode(name) if name else b"f%06d.bin" % self.n)

    def write(self, data: bytes, name: bytes | str | None = None, sub: str = "") -> bytes:
        p = self.path(name, sub)
        with open(p, "wb") as f:
            f.write(data)
        self.tree.files.append(p)
        return p

    def data(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def group(self, data: bytes, copies: int, sub: str = "") -> list[bytes]:
        """copies files with identical content: one true group."""
        paths = [self.write(data, sub=sub) for _ in range(copies)]
        self.tree.groups.append(paths)
        return paths

    def unique(self, size: int, sub: str = "") -> bytes:
        return self.write(self.data(size), sub=sub)


def hostile_tree(root: Path, seed: int = 7, newline_names: bool = True) -> Tree:
    """Every awkward case the foundation issue lists, with its known truth."""
    b = Builder(root, seed)
    base = b.data(200_000)
    b.group(base, 3, sub="dups")
    for i, where in enumerate((0, 100_000, 199_999)):  # differ in first/middle/last byte
        v = bytearray(base)
        v[where] ^= 0xFF
        b.write(bytes(v), sub=f"near{i}")
    tail = bytearray(base)
    tail[-4096:] = b.data(4096)  # differs only in the last 4 KiB
    b.write(bytes(tail), sub="near3")
    # same size, same head, different tail (a second pair whose heads collide)
    head = b.data(8192)
    b.write(head + b.data(8192), sub="heads")
    b.write(head + b.data(8192), sub="heads")
    # empty files: no group by default
    for _ in range(3):
        b.write(b"", sub="empty")
    # hardlinks: one inode with three names is one file; plus a real copy of it
    hl = b.data(50_000)
    a = b.write(hl, sub="links")
    for k in range(2):
        os.link(a, os.path.join(os.path.dirname(a), b"link%d" % k))
    c = b.write(hl, sub="links2")
    b.tree.groups.append([a, c])
    # symlinks and a fifo are never files
    os.symlink(a, os.path.join(os.path.dirname(a), b"symlink"))
    os.symlink(b"/nonexistent", os.path.join(os.path.dirname(a), b"dangling"))
    os.mkfifo(os.path.join(os.path.dirname(a), b"fifo"))
    # odd names: non-UTF-8 bytes (and newlines when asked)
    odd = b.data(30_000)
    names: list[bytes] = [b"caf\xe9.jpg", b"\xff\xfe raw", b"sp ace.txt"]
    if newline_names:
        names += [b"new\nline", b"tab\there\n"]
    b.tree.groups.append([b.write(odd, name=n, sub="odd") for n in names])
    # sparse files: identical holes and data
    sp = []
    for _ in range(2):
        p = b.path(sub="sparse")
        with open(p, "wb") as f:
            f.truncate(10 * 1024 * 1024)
            f.seek(5 * 1024 * 1024)
            f.write(b"middle")
        b.tree.files.append(p)
        sp.append(p)
    b.tree.groups.append(sp)
    # a pair of small identical files (smaller than the head block)
    b.group(b"tiny\n", 2, sub="small")
    # unique files of assorted sizes, some sharing sizes with nothing identical
    for size in (1, 7, 4096, 4097, 65536, 1_000_000):
        b.unique(size, sub="uniq")
        b.unique(size, sub="uniq2")
    return b.tree


def bulk_tree(root: Path, files: int, total_bytes: int, dup_ratio: float = 0.3,
              seed: int = 3) -> Tree:
    """A large tree for benchmarks: `files` files, ~total_bytes, ~dup_ratio duplicates.

    Sizes follow a rough photo-library mix (many small, some large). Duplicated
    files get 1-3 extra copies in other directories.
    """
    b = Builder(root, seed)
    mean = max(total_bytes // files, 1)
    written = 0
    while len(b.tree.files) < files:
        size = max(1, int(b.rng.expovariate(1 / mean)))
        sub = f"d{b.rng.randrange(200):03d}/e{b.rng.randrange(10)}"
        if b.rng.random() < dup_ratio / 2:
            data = b.data(size)
            copies = 1 + min(b.rng.randrange(1, 4), files - len(b.tree.files) - 1)
            paths = [b.write(data, sub=sub)]
            for _ in range(copies - 1):
                paths.append(b.write(data, sub=f"d{b.rng.randrange(200):03d}/copy"))
            if len(paths) > 1:
                b.tree.groups.append(paths)
            written += size * len(paths)
        else:
            b.unique(size, sub=sub)
            written += size
    return b.tree
