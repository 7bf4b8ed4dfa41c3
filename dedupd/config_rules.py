"""Rules between the tables of one config, checked when it is loaded.

Pure: only the parsed values are compared (paths lexically, after `..` and
`//` are folded), never the filesystem, so every command that loads a config
gets them for free and a unit test needs no disks. What depends on the state
of the machine (does the path exist, is it a mergerfs mount, do two paths meet
through a symlink) is dedupd/preflight.py's job.

Each rule raises ConfigError naming the file, the key and the problem (exit 78).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from dedupd.errors import ConfigError

if TYPE_CHECKING:
    from dedupd.config import ConsolidateConfig, VolumeConfig

# A table name becomes a socket file name (volumes), part of index keys and of
# log lines: one path component of safe characters, not starting with a dot.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def check_name(file: str, section: str, name: str) -> None:
    if not NAME.match(name):
        quoted = json.dumps(name)  # as TOML spells a key with dots or slashes
        raise ConfigError(file, f"{section}.{quoted}",
                          f"{quoted} is not usable as a name: use letters, digits, '_', '.' "
                          "and '-' (at most 64, not starting with '.'); the name becomes "
                          "a socket file in runtime_dir")


HOST_MAX = 200


def check_host(file: str, key: str, host: str) -> None:
    """`[database] host`: how this host is told apart from the others sharing an
    inventory, printed in reports ("nas1:/tank/photos")."""
    if not host.strip():
        raise ConfigError(file, key, "must not be empty (leave it out to use /etc/machine-id)")
    if len(host) > HOST_MAX:
        raise ConfigError(file, key, f"must be at most {HOST_MAX} characters; got {len(host)}")
    if not host.isprintable():
        raise ConfigError(file, key, f"must be printable text (no control characters); "
                          f"got {host!r}")


def norm(p: Path) -> str:
    """The lexical form used for comparisons: '/a/./b/../c/' -> '/a/c'."""
    return os.path.normpath(os.fspath(p))


def relation(a: str, b: str) -> str | None:
    """'equal', 'inside' (a is under b), 'contains' (b is under a), or None."""
    if a == b:
        return "equal"
    if a.startswith(b.rstrip("/") + "/"):
        return "inside"
    if b.startswith(a.rstrip("/") + "/"):
        return "contains"
    return None


def check_volumes(file: str, vols: Mapping[str, VolumeConfig]) -> None:
    """No two volumes may cover the same files: two passes would race over them
    (and with different kinds, one would hardlink what the other shares by extent)."""
    seen: list[tuple[str, str, str]] = []
    for name, v in vols.items():
        kind, path = v.kind, norm(v.path)
        for other, okind, opath in seen:
            rel = relation(path, opath)
            if rel is None:
                continue
            key = f"volumes.{name}.path"
            if rel == "equal" and kind != okind:
                raise ConfigError(file, key, f"{path} is configured as two kinds: {kind} here "
                                  f"and {okind} in volumes.{other}")
            where = {"equal": "is the same path as", "inside": "is inside",
                     "contains": "contains"}[rel]
            raise ConfigError(file, key, f"{path} {where} volumes.{other} ({opath}): "
                              "volumes must not overlap")
        seen.append((name, kind, path))


def check_branches(file: str, name: str, branches: tuple[Path, ...]) -> None:
    """Each branch of a pool once, and none inside another."""
    seen: list[str] = []
    for b in branches:
        p = norm(b)
        for q in seen:
            rel = relation(p, q)
            if rel == "equal":
                raise ConfigError(file, f"volumes.{name}.branches",
                                  f"{p} is listed twice")
            if rel is not None:
                raise ConfigError(file, f"volumes.{name}.branches",
                                  f"{p} and {q}: one branch is inside the other")
        seen.append(p)


def check_archive(file: str, name: str, archive: Path, sources: tuple[Path, ...]) -> None:
    """The archive must be apart from every source: an archive inside a source
    would be imported into itself; a source inside the archive would be
    consolidated onto itself (and pruning would delete archive files)."""
    a = norm(archive)
    for s in sources:
        rel = relation(a, norm(s))
        if rel is not None:
            what = {"equal": "is the same directory as", "inside": "is inside",
                    "contains": "contains"}[rel]
            raise ConfigError(file, f"consolidate.{name}.archive",
                              f"{a} {what} the source {norm(s)}: an archive and its "
                              "sources must not overlap")
    seen: list[str] = []
    for s in sources:
        p = norm(s)
        if p in seen:
            raise ConfigError(file, f"consolidate.{name}.sources", f"{p} is listed twice")
        seen.append(p)


def archives_inside(vols: Iterable[VolumeConfig], cons: Iterable[ConsolidateConfig],
                    link_kinds: tuple[str, ...], form: Callable[[Path], str] = norm,
                    reach: Callable[[VolumeConfig, Path, Path], str | None] | None = None
                    ) -> Iterator[tuple[VolumeConfig, Path, str, ConsolidateConfig, str]]:
    """(volume, root as configured, root, consolidation, archive), the paths in `form`
    (lexical here; real ones in preflight, as the walk sees them), for each root of a
    volume deduped by hardlinks (link_kinds) that holds a consolidation's archive
    together with other files, and whose exclude patterns do not keep the walk out of
    the archive: a hardlink from an archive file to a name outside it (the source in
    its share, say) would let the next write to that name, in place, change the
    archive. A volume inside the archive (or equal to it) only links archive files
    together; extents (other kinds) are shared copy-on-write: a write reaches one file.
    reach(volume, root, archive): where a walk of root meets the archive when `form`
    does not show it inside (a bind mount; preflight), else None."""
    cons = list(cons)
    for v in vols:
        if v.kind not in link_kinds:
            continue
        for root in (v.path, *v.branches):
            r = form(root)
            for c in cons:
                a = form(c.archive)
                if relation(a, r) is None and reach is not None:
                    a = reach(v, root, c.archive) or a
                if relation(a, r) == "inside" and not walked_around(a, r, v.exclude):
                    yield v, root, r, c, a


def check_archives_apart(file: str, vols: Mapping[str, VolumeConfig],
                         cons: Mapping[str, ConsolidateConfig],
                         link_kinds: tuple[str, ...]) -> None:
    """The first of archives_inside, by the paths as written, as a ConfigError."""
    for v, _root, r, c, a in archives_inside(vols.values(), cons.values(), link_kinds):
        raise ConfigError(
            file, f"volumes.{v.name}.path",
            f"{r} holds consolidate.{c.name}'s archive {a} and other files: "
            "its hardlinks would let a write outside the archive change the "
            f'archive\'s files; add "{a}" to volumes.{v.name}.exclude, or keep '
            "the volume beside the archive")


def walked_around(target: str, root: str, patterns: tuple[str, ...]) -> bool:
    """Whether a walk of root under these exclude patterns (matched, as the walk does,
    against each entry's name and full path) never enters target."""
    import fnmatch  # here: the config of most hosts has no consolidation

    d = target
    while d != root and len(d) > len(root):
        if any(fnmatch.fnmatchcase(os.path.basename(d), p) or fnmatch.fnmatchcase(d, p)
               for p in patterns):
            return True
        d = os.path.dirname(d)
    return False
