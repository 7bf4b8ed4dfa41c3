"""Where a file goes in the archive: the `layout` template and name collisions.

Placeholders (str.format syntax, so `{month:02d}` works):
  year, month, day  ints from the capture date
  name              the source file name ("IMG_0001.JPG")
  stem, ext         "IMG_0001" and ".JPG" (ext keeps its dot; "" when none)
  source            the last component of the source root ("backup-disk1")
Files without a usable date go to `<undated_dir>/<name>`.

Names need not be UTF-8: they are decoded with surrogateescape for the template
and encoded back, so the archive name has exactly the source's bytes (but for a
name dedupd reserves in the archive, which gets a "_" first: `reserved`).
"""

from __future__ import annotations

import functools
import os
import string
from dataclasses import dataclass
from datetime import datetime

from dedupd.errors import ConfigError
from dedupd.fsops.archive_lock import LOCK_NAME, is_lock_temp, is_temp_name
from dedupd.fsops.link import TEMP_PREFIX as LINK_TEMP_PREFIX

PLACEHOLDERS = ("year", "month", "day", "name", "stem", "ext", "source")


class UnsafePath(ValueError):
    """A rendered path that would leave the archive (absolute, '..') or is empty."""


@dataclass(frozen=True)
class Fields:
    name: bytes
    source_root: bytes
    when: datetime | None


def split_name(name: bytes) -> tuple[bytes, bytes]:
    """("IMG_1", ".jpg"); a leading dot is part of the stem (".bashrc" has no ext)."""
    stem, ext = os.path.splitext(name)
    return stem, ext


def render(layout: str, undated_dir: str, f: Fields) -> bytes:
    """The archive-relative path for one file. Raises ValueError for an unsafe result."""
    if f.when is None:
        rel = os.fsencode(undated_dir) + b"/" + f.name
    else:
        # only the placeholders the template has (a first import renders one path a
        # copy: the default layout needs no split of the name and no source root)
        used = _used(layout)
        kw: dict[str, object] = {"year": f.when.year, "month": f.when.month,
                                 "day": f.when.day}
        if "name" in used:
            kw["name"] = os.fsdecode(f.name)
        if "stem" in used or "ext" in used:
            stem, ext = split_name(f.name)
            kw["stem"], kw["ext"] = os.fsdecode(stem), os.fsdecode(ext)
        if "source" in used:
            kw["source"] = os.fsdecode(os.path.basename(f.source_root.rstrip(b"/")))
        rel = os.fsencode(layout.format(**kw))
    return safe_relative(rel)


class Renderer:
    """render() for one (checked) layout, memoised where that is exact: a layout whose
    last component is `{name}` alone and whose directories name nothing of the file
    (the default "{year}/{month:02d}/{name}") renders each date's directory once, then
    appends the name as it is (the template's decode and encode give its bytes back,
    surrogateescape); any other layout, or a directory that renders unsafe, goes
    through render(), whose answers and errors these equal."""

    MAX_DIRS = 4096  # dates remembered (a cache, so bounded: forgotten all at once)

    def __init__(self, layout: str, undated_dir: str) -> None:
        self.layout, self.undated_dir = layout, undated_dir
        self._dir = _dir_template(layout)
        self._by_source = self._dir is not None and "source" in _used(self._dir)
        self._dirs: dict[tuple[int, int, int, bytes], bytes | None] = {}

    def render(self, name: bytes, source_root: bytes, when: datetime | None) -> bytes:
        if when is not None and self._dir is not None and name not in (b".", b".."):
            key = (when.year, when.month, when.day, source_root if self._by_source else b"")
            d = self._dirs.get(key, _UNSEEN)
            if d is _UNSEEN:
                if len(self._dirs) >= self.MAX_DIRS:
                    self._dirs.clear()
                d = self._dirs[key] = self._safe_dir(source_root, when)
            if d is not None:  # else unsafe: render() says why
                if b".dedupd-" in name and reserved(name):
                    name = unreserved(name)
                return d + b"/" + name
        return render(self.layout, self.undated_dir, Fields(name, source_root, when))

    def _safe_dir(self, source_root: bytes, when: datetime) -> bytes | None:
        assert self._dir is not None  # render() asks only then
        try:
            return render(self._dir, self.undated_dir, Fields(b"", source_root, when))
        except ValueError:
            return None


_UNSEEN = b"\0unseen"  # not a directory: no rendered path has a NUL


@functools.lru_cache(maxsize=8)
def renderer(layout: str, undated_dir: str) -> Renderer:
    """The Renderer of a layout (one a run, kept for the next)."""
    return Renderer(layout, undated_dir)


@functools.lru_cache(maxsize=32)
def _dir_template(layout: str) -> str | None:
    """The directories of a layout that ends in "/{name}" and names no part of the
    file before it; None for any other."""
    if not layout.endswith("/{name}"):
        return None
    parsed = list(string.Formatter().parse(layout))
    lit, field_name, spec, conv = parsed[-1]
    if field_name != "name" or spec or conv is not None or not lit.endswith("/"):
        return None
    d = layout[:-len("/{name}")]
    return d if not _used(d) & {"name", "stem", "ext"} else None


@functools.lru_cache(maxsize=32)
def _used(layout: str) -> frozenset[str]:
    """The placeholders a (checked: check_layout) template names."""
    return frozenset(f for _, f, _, _ in string.Formatter().parse(layout) if f is not None)


def safe_relative(rel: bytes) -> bytes:
    """Normalise a/b//c to a/b/c; refuse absolute paths, '.', '..' and empty names.
    A name dedupd keeps for its own files in the archive gets a "_" first (reserved)."""
    parts = rel.split(b"/")
    if b"" in parts:
        parts = [p for p in parts if p]
    if rel.startswith(b"/") or not parts or b"." in parts or b".." in parts:
        raise UnsafePath(f"layout produced an unsafe path: {os.fsdecode(rel)!r}")
    if b".dedupd-" in rel:  # every reserved name starts so: rare, and cheap to rule out
        parts = [unreserved(p) if reserved(p) else p for p in parts]
    return b"/".join(parts)


def unreserved(name: bytes) -> bytes:
    """A reserved name (reserved) with a "_" first, its stem cut (as with_suffix's)
    where that passes NAME_MAX: a 255-byte ".dedupd-copy.*.tmp" failed its link
    with ENAMETOOLONG at every run."""
    new = b"_" + name
    return new if len(new) <= NAME_MAX else fit_name(name, b"_", b"")


def reserved(name: bytes) -> bool:
    """A name the archive's walk skips as dedupd's own (temp copies, the lock and its
    replacement's temp name, the linker's temp links; consolidate/inventory.py): a copy
    under it would be unseen, so copied again at every run (and swept after an
    interrupted one)."""
    return (is_temp_name(name) or name == LOCK_NAME or is_lock_temp(name)
            or name.startswith(LINK_TEMP_PREFIX))


NAME_MAX = 255  # bytes in one name: Linux's limit on every filesystem dedupd supports


def with_suffix(rel: bytes, n: int) -> bytes:
    """'2021/05/a.jpg', 2 -> '2021/05/a (2).jpg' (the n-th name tried on a collision).
    A name that would pass NAME_MAX loses the end of its stem (at a UTF-8 character
    boundary where it is UTF-8), keeping its extension: else its link fails at every run."""
    d, name = os.path.split(rel)
    new = fit_name(name, b"", f" ({n})".encode())
    return os.path.join(d, new) if d else new


def fit_name(name: bytes, first: bytes, tag: bytes) -> bytes:
    """first + name's stem + tag + its extension, the stem's end cut (at a UTF-8
    character boundary where it is UTF-8) to fit NAME_MAX; an extension as long as a
    name: the name cut as a whole."""
    stem, ext = split_name(name)
    room = NAME_MAX - len(first) - len(tag) - len(ext)
    if room < 1:  # an extension as long as a name: cut the name as a whole
        stem, ext = _cut(name, NAME_MAX - len(first) - len(tag)), b""
    elif len(stem) > room:
        stem = _cut(stem, room)
    return first + stem + tag + ext


def _cut(b: bytes, n: int) -> bytes:
    """b's first n bytes at most, never ending inside a UTF-8 character (else n)."""
    head = b[:n]
    try:
        b.decode()
    except UnicodeDecodeError:
        return head  # not UTF-8: bytes are all there is
    return head.decode(errors="ignore").encode()


def check_layout(name: str, layout: str, undated_dir: str, file: str = "<config>") -> None:
    """Refuse a template that could not render a safe archive path for every file.

    Pure, so the config loader calls it (check-config and every start report a
    bad layout with exit 78 before anything runs). Placeholders must be plain
    names from PLACEHOLDERS (no `{name.attr}` or `{year[0]}`), the format specs
    must suit their values (a sample is rendered), and neither the template nor
    undated_dir may be absolute or climb out with `..`.
    """
    key = f"consolidate.{name}.layout"
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(layout) if f is not None]
    except ValueError as e:
        raise ConfigError(file, key, f"{e} in {layout!r}") from None
    for f in fields:
        if f not in PLACEHOLDERS:
            raise ConfigError(file, key, f"unknown placeholder {{{f}}} "
                              f"(use {', '.join(PLACEHOLDERS)})")
    if "{name}" not in layout and "{stem}" not in layout:
        raise ConfigError(file, key, "must contain {name} or {stem}: otherwise "
                          "every file of a day would collide")
    sample = Fields(b"IMG_0001.JPG", b"/mnt/backup", datetime(2001, 2, 3, 4, 5, 6))
    try:
        render(layout, undated_dir, sample)
    except UnsafePath as e:
        raise ConfigError(file, key, f"{e}: the layout must render a path inside "
                          "the archive") from None
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(file, key, f"cannot render {layout!r}: {e}") from None
    try:
        safe_relative(os.fsencode(undated_dir) + b"/x")
    except ValueError:
        raise ConfigError(file, f"consolidate.{name}.undated_dir", "must be a relative "
                          f"directory inside the archive (no leading '/', no '..'); "
                          f"got {undated_dir!r}") from None
