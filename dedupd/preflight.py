"""Checks of a loaded config against the machine, before anything runs.

config.load() already refused what the file alone gets wrong (config_rules.py);
what is left depends on the filesystem: a volume path that does not exist or
is a file, a runtime_dir that is a file, two volumes (or an archive and a
source) that meet through a symlink or a bind mount, a hardlink volume whose
walk (by real paths, through bind mounts) would enter an archive, and a volume whose kind does not
fit the filesystem under it (a mergerfs pool configured as plain).

`check-config` reports every finding; `run` (one-shot and daemon, at start and
on reload) refuses to start on an error (ConfigError, exit 78) and logs the
advice. Reads only (stat, realpath, /proc/self/mountinfo, xattrs): may block on
a slow or hung mount, so the daemon calls it from a thread, never its loop.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dedupd import pathtrust
from dedupd.config import DESTRUCTIVE_KINDS, Config, ConsolidateConfig, VolumeConfig
from dedupd.config_rules import archives_inside, relation
from dedupd.errors import ConfigError, TemporaryFailure
from dedupd.files.mounts import reached_at


@dataclass
class Findings:
    errors: list[ConfigError] = field(default_factory=list)
    # volume paths that do not exist: an error for check-config, but at a run's
    # start a temporary failure (exit 75): the disk may not be mounted yet
    missing: list[ConfigError] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)  # works, but another setting fits better

    @property
    def all_errors(self) -> list[ConfigError]:
        return self.errors + self.missing

    def raise_first(self) -> None:
        """For a run: a config error (78) first, else a missing volume path (75)."""
        if self.errors:
            raise self.errors[0]
        if self.missing:
            raise TemporaryFailure(f"{self.missing[0]} (not mounted yet?)")


def check(cfg: Config, volumes: Iterable[VolumeConfig] | None = None, *,
          consolidate: bool = True) -> Findings:
    """Everything about cfg that depends on the machine. `volumes` defaults to the
    configured ones (a run may serve a selection, or ad-hoc paths)."""
    out = Findings()
    vols = list(cfg.volumes.values() if volumes is None else volumes)
    f = cfg.source
    _check_runtime_dir(out, f, cfg.daemon.runtime_dir)
    for v in vols:
        _check_volume(out, f, v)
    _check_real_overlaps(out, f, [(f"volumes.{v.name}.path", v.path) for v in vols
                                  if v.path.is_dir()])
    _check_archives_apart(out, f, vols, cfg.consolidate.values())
    if consolidate:
        for c in cfg.consolidate.values():
            _check_consolidate(out, f, c.name, c.archive, c.sources)
    for b in cfg.backups.values():
        if b.spool_dir is not None:
            _need_dir(out, f, f"backups.{b.name}.spool_dir", b.spool_dir)
        if b.target.config is not None and not b.target.config.is_file():
            out.errors.append(ConfigError(f, f"backups.{b.name}.target.config",
                                          f"{b.target.config}: no such file"))
    return out


def _describe(p: Path) -> str | None:
    """Why p is not a usable directory, or None when it is one."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return f"{p} does not exist"
    except NotADirectoryError:
        return f"{p}: a component of the path is a file"
    except OSError as e:
        return f"{p}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{p} is a file, not a directory"
    return None


def _need_dir(out: Findings, f: str, key: str, p: Path, *, mountable: bool = False) -> bool:
    """Record why p is not a directory; `mountable`: a missing p may be a disk
    not mounted yet (see Findings.missing)."""
    why = _describe(p)
    if why is not None:
        where = out.missing if mountable and not os.path.lexists(p) else out.errors
        where.append(ConfigError(f, key, why))
    return why is None


def _check_runtime_dir(out: Findings, f: str, d: Path) -> None:
    # The daemon creates it when missing: only something else in its place is wrong.
    for p in (d, *d.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                out.errors.append(ConfigError(f, "daemon.runtime_dir", (
                    f"{d} is a file, not a directory" if p == d
                    else f"{d} cannot be created: {p} is a file")))
            return


def _check_volume(out: Findings, f: str, v: VolumeConfig) -> None:
    key = f"volumes.{v.name}"
    if not _need_dir(out, f, f"{key}.path", v.path, mountable=True):
        return
    for b in v.branches:
        _need_dir(out, f, f"{key}.branches", b, mountable=True)
    for what, p in (("path", v.path), *(("branches", b) for b in v.branches)):
        why = pathtrust.why_bent(os.fsencode(os.path.abspath(p)))
        if why is not None:  # swapped for a symlink, the volume's work would go there
            out.errors.append(ConfigError(f, f"{key}.{what}", f"{p}: {why}"))
            return
    for p in (v.path, *v.branches) if v.kind in ("plain", "pool") else ():
        why = no_hardlinks(p)
        if why:
            out.errors.append(ConfigError(f, f"{key}.kind", why))
            return
    if v.kind == "plain":
        tip = mergerfs_advice(v)
        if tip:
            out.advice.append(f"{f}: {key}.kind: {tip}")
    elif v.kind == "pool":
        tip = pool_branches_advice(v)
        if tip:
            out.advice.append(f"{f}: {key}.branches: {tip}")


def no_hardlinks(p: Path) -> str | None:
    """Why a kind that deduplicates by hard links cannot work at p (a FAT filesystem
    has none: every link would fail), else None."""
    from dedupd.files.fsid import FAT_FSTYPES
    from dedupd.files.mounts import mount_of_path

    m = mount_of_path(p)
    if m is None or m.fstype not in FAT_FSTYPES:
        return None
    return (f"{p} is on {m.fstype} ({os.fsdecode(m.mountpoint)}), which has no hard links; "
            "this kind deduplicates by hard links, so it would change nothing there. "
            f"`dedupd scan {p}` reports its duplicates")


def mergerfs_advice(v: VolumeConfig) -> str | None:
    """For a plain volume on a mergerfs pool: which kind fits instead, else None.

    Plain works there, but it hardlinks through the FUSE view, which only links
    copies that happen to sit on one branch; kind "pool" walks the branches and
    moves duplicates across them (link first, delete second).
    """
    from dedupd.volumes.detect import mergerfs_branches, mount_of

    mnt, fstype = mount_of(v.path)
    if fstype != "fuse.mergerfs":
        return None
    branches = mergerfs_branches(mnt)
    listed = ", ".join(f'"{os.fsdecode(b)}"' for b in branches) or "...the branch paths..."
    return (f"{v.path} is on a mergerfs pool ({os.fsdecode(mnt)}); kind \"plain\" only "
            "links copies that share a branch. Use kind = \"pool\" with "
            f"branches = [{listed}] to deduplicate across its drives")


def pool_branches_advice(v: VolumeConfig) -> str | None:
    """For a pool volume on a mergerfs mount whose branches differ from the
    configured ones: what the mount reports. None when they agree or unknown."""
    from dedupd.volumes.detect import mergerfs_branches, mount_of

    mnt, fstype = mount_of(v.path)
    if fstype != "fuse.mergerfs":
        return None
    actual = {os.path.realpath(b) for b in mergerfs_branches(mnt)}
    if not actual or actual == {os.fsencode(_real(b)) for b in v.branches}:
        return None
    listed = ", ".join(f'"{os.fsdecode(b)}"' for b in sorted(actual))
    return (f"the mergerfs mount at {os.fsdecode(mnt)} has branches [{listed}]; files on "
            "a branch not listed here are not deduplicated")


def _real(p: Path) -> str:
    return os.path.realpath(p)


def _reached(target: Path, root: Path) -> bool:
    """Whether a walk of root meets target through a bind mount (mounts.reached_at)."""
    return reached_at(os.fsencode(target), os.fsencode(root)) is not None


def _reach(v: VolumeConfig, root: Path, target: Path) -> str | None:
    """Where a walk of v's root meets the directory target through a bind mount (the
    real path it has there), or None (mounts.reached_at)."""
    at = reached_at(os.fsencode(target), os.fsencode(root), v.cross_mounts)
    return None if at is None else os.fsdecode(at)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _check_real_overlaps(out: Findings, f: str, items: list[tuple[str, Path]]) -> None:
    """Overlaps the lexical rule could not see: symlinks and bind mounts."""
    for i, (key, p) in enumerate(items):
        for okey, op in items[:i]:
            rel = "equal" if _same_dir(p, op) else relation(_real(p), _real(op)) or (
                "inside" if _reached(p, op) or _reached(op, p) else None)
            if rel is not None:
                out.errors.append(ConfigError(f, key, (
                    f"{p} and {op} ({okey.rsplit('.', 1)[0]}) are the same directory or one "
                    "holds the other (through a symlink or a bind mount): volumes must not "
                    "overlap")))


def _check_archives_apart(out: Findings, f: str, vols: list[VolumeConfig],
                          cons: Iterable[ConsolidateConfig]) -> None:
    """config_rules.check_archives_apart as the walk sees the paths: it walks a
    volume's roots by their real paths (volumes.volume_roots) and matches excludes
    against those, so an archive reached through a symlink (in its own path or the
    volume's) or a bind mount (the volume's mount showing a directory above the
    archive, or with cross_mounts one below the volume's root) is inside all the
    same, and an exclude that only names the path as written in the config keeps
    nothing out."""
    for v, root, _r, c, a in archives_inside(vols, cons, DESTRUCTIVE_KINDS, _real, _reach):
        out.errors.append(ConfigError(f, f"volumes.{v.name}.path", (
            f"{root} holds consolidate.{c.name}'s archive {c.archive} (really "
            f"{a}, through a symlink or a bind mount) and other files: its hardlinks would let "
            f'a write outside the archive change the archive\'s files; add "{a}" '
            f"to volumes.{v.name}.exclude too (the walk matches real paths), or "
            "keep the volume beside the archive")))


def _check_consolidate(out: Findings, f: str, name: str, archive: Path,
                       sources: tuple[Path, ...]) -> None:
    key = f"consolidate.{name}"
    for s in sources:
        _need_dir(out, f, f"{key}.sources", s)
    if archive.exists() and not archive.is_dir():
        out.errors.append(ConfigError(f, f"{key}.archive", f"{archive} is a file, "
                                      "not a directory"))
        return
    a = _real(archive)
    for s in sources:
        if not s.is_dir():
            continue
        rel = "equal" if _same_dir(archive, s) else relation(a, _real(s))
        if rel is not None:
            out.errors.append(ConfigError(f, f"{key}.archive", (
                f"{archive} and the source {s} are the same directory or one holds the "
                "other (through a symlink or a bind mount): the archive must be outside "
                "every source")))
