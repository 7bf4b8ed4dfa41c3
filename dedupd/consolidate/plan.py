"""Stage 2: turn the inventory into a plan (pure decisions, no writes).

- content the archive already has (anywhere, under any name) is not copied;
  its source paths only need provenance rows: rows that still describe the
  same unchanged source and archive file are kept as they are (no read), new
  ones are confirmed by a byte compare when the plan is carried out;
- every other content is copied once, from its first source path (sources in
  config order, then path order), to the path its layout renders to;
- archive contents held by two or more inodes are candidates for hardlinking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.dates import CaptureDate, capture_date
from dedupd.consolidate.inventory import Content, Inventory, SourcePath, Unsorted
from dedupd.consolidate.layout import renderer, with_suffix
from dedupd.files.events import Problem
from dedupd.index.provenance import Provenance

MAX_SUFFIX = 10_000


@dataclass(frozen=True)
class Copy:
    """Copy `src` to `dest` (absolute), then record every source path of `content`."""

    content: Content
    src: SourcePath
    dest: bytes
    date: CaptureDate
    # source paths already found byte-equal to src as it was read (an unsorted size
    # group, sorted while copied): recorded without another read once the copy is
    # verified against those same bytes
    compared: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class Known:
    """Content already in the archive at `target`; `fresh` paths have valid rows,
    `check` paths need a byte compare before a row is written."""

    content: Content
    target: bytes
    fresh: tuple[SourcePath, ...]
    check: tuple[SourcePath, ...]


@dataclass
class Plan:
    copies: list[Copy] = field(default_factory=list)
    known: list[Known] = field(default_factory=list)
    archive_dups: list[Content] = field(default_factory=list)
    unsorted: list[Unsorted] = field(default_factory=list)  # sorted while copied
    # contents to copy, named when their source is read for the copy (new_copy with
    # its bytes: the EXIF date costs no read of its own); in source order
    unnamed: list[Content] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    bytes_read: int = 0  # EXIF reads made while planning

    @property
    def bytes_to_copy(self) -> int:
        return sum(c.content.size for c in self.copies)


class Names:
    """Archive paths taken (existing or planned), to pick collision-free names. A name
    is free when nothing planned has it and the disk shows nothing there; a directory
    found missing once holds nothing but planned names for the rest of the run (a
    first import: one look per directory, not one per file). A name that appears
    anyway is never replaced: the copy's link() fails and it takes the next suffix."""

    def __init__(self, existing: set[bytes]) -> None:
        self.taken = set(existing)
        # want -> the last suffix number handed out: a thousand files of one name in
        # one directory (__init__.py, README) must not each try every number again
        self._next: dict[bytes, int] = {}
        self._dirs_seen: set[bytes] = set()
        self._dirs_missing: set[bytes] = set()

    def _on_disk(self, path: bytes) -> bool:
        d = path[:path.rfind(b"/") + 1]  # os.path.dirname, inline: once per name
        if d and d != b"/" * len(d):
            d = d.rstrip(b"/")
        if d not in self._dirs_seen:
            self._dirs_seen.add(d)
            if not os.path.lexists(d):
                self._dirs_missing.add(d)
        return d not in self._dirs_missing and os.path.lexists(path)

    def claim(self, want: bytes, policy: str) -> bytes | None:
        first = 1 if policy == "skip" else self._next.get(want, 1)  # skip: the name or none
        for n in range(first, MAX_SUFFIX):
            cand = want if n == 1 else with_suffix(want, n)
            if cand not in self.taken and not self._on_disk(cand):
                self.taken.add(cand)
                self._next[want] = n + 1
                return cand
            if policy == "skip":
                return None
        return None


def make_plan(inv: Inventory, cfg: ConsolidateConfig, rows: dict[bytes, Provenance],
              names: Names, defer_names: bool = False) -> Plan:
    """Decide every copy and confirmation; reads EXIF of the files to copy only.

    `names` starts as the archive's paths; the names planned here are added to it.
    With defer_names the contents to copy go to plan.unnamed (named as they are read
    for their copies, in source order), else each is named here (a dry run).
    """
    plan = Plan()
    for c in inv.contents:
        if len(c.archive) > 1:
            plan.archive_dups.append(c)
        if not c.sources:
            continue
        if c.archive:
            plan.known.append(_known(c, rows))
        elif defer_names:
            plan.unnamed.append(c)
        else:
            _plan_copy(plan, c, cfg, inv.roots.archive, names)
    plan.copies.sort(key=lambda x: x.dest)
    order = {r: i for i, r in enumerate(inv.roots.sources)}
    plan.unnamed.sort(key=lambda c: (order[c.sources[0].root], c.sources[0].path))
    plan.unsorted = list(inv.unsorted)
    return plan


def copy_order(singles: list[Copy | Content], groups: list[Unsorted], run_bytes: int,
               run_files: int) -> list[Copy | Content | Unsorted]:
    """The order a round reads and stages its copies in: the single files (planned copies,
    then the contents named as read) and the unsorted size groups, each kept in its own
    order, taken in turns -- single files up to run_bytes, then groups up to run_files
    inodes -- so both go at one pace in files. On a first import the single files (sizes
    met once) are mostly large and the groups mostly small: one after the other, the
    first were bound by the disk (their syncs and read-backs; the run waited for the
    worker, a core idle) and the second by the CPU. In turns, one's disk work overlaps
    the other's reads and names. In runs, not file by file: merged file by file, the
    real bench tree's import took more CPU (3.15 against 2.93 s) and no less time.
    Copies are named as read, so which of two contents wanting one name gets the
    suffix follows this order (the same for the same trees)."""
    n_singles, n_group_files = len(singles), sum(g.inodes for g in groups)
    out: list[Copy | Content | Unsorted] = []
    i = j = group_files = 0
    while i < n_singles or j < len(groups):
        if j == len(groups) or (i < n_singles and i * n_group_files <= group_files * n_singles):
            size = 0
            while i < n_singles and size < run_bytes:
                size += copy_size(singles[i])
                out.append(singles[i])
                i += 1
        else:
            n = 0
            while j < len(groups) and n < run_files:
                n += groups[j].inodes
                out.append(groups[j])
                j += 1
            group_files += n
    return out


def copy_size(it: Copy | Content) -> int:
    """The bytes of a planned copy, or of a content to be named as read."""
    return it.content.size if isinstance(it, Copy) else it.size


def _known(c: Content, rows: dict[bytes, Provenance]) -> Known:
    apaths = {p for f in c.archive for p in f.paths}
    target = min(apaths)
    for s in c.sources:  # keep the archive file the rows already name, if still valid
        r = rows.get(s.path)
        if r is not None and r.archive_path in apaths:
            target = r.archive_path
            break
    fresh: list[SourcePath] = []
    check: list[SourcePath] = []
    for s in c.sources:
        r = rows.get(s.path)
        f = s.file
        # a row naming another archive file of this content stays valid too: after a
        # hash collision the content group holds files that only share a hash
        ok = (r is not None and r.archive_path in apaths and c.full is not None
              and r.content == c.full
              and r.matches_stat(f.dev, f.ino, f.size, f.mtime_ns, f.ctime_ns))
        (fresh if ok else check).append(s)
    return Known(c, target, tuple(fresh), tuple(check))


def plan_collisions(plan: Plan, cfg: ConsolidateConfig, archive: bytes, names: Names,
                    sources: list[SourcePath]) -> None:
    """Plan copies for sources whose bytes differ from every archive file of their
    hash group (an XXH3 collision, or a forged index row): each is content of its own."""
    for s in sources:
        _plan_copy(plan, Content(s.file.size, None, (), (s,)), cfg, archive, names)


def _plan_copy(plan: Plan, c: Content, cfg: ConsolidateConfig, archive: bytes,
               names: Names) -> None:
    cp = new_copy(plan, c, cfg, archive, names)
    if cp is not None:
        plan.copies.append(cp)


def new_copy(plan: Plan, c: Content, cfg: ConsolidateConfig, archive: bytes, names: Names,
             data: bytes | None = None) -> Copy | None:
    """The copy of content c from its first source (whose bytes, when given, are used
    for the EXIF date instead of a read), with its name claimed; None (and a problem
    in the plan) when it gets no name. Not added to plan.copies."""
    src = c.sources[0]
    date, nread = capture_date(src.path, src.file.mtime_ns, cfg.date_from, data)
    plan.bytes_read += nread
    if date.exif_problem and date.exif_problem not in ("", "no DateTimeOriginal"):
        plan.problems.append(Problem(src.path, "exif", date.exif_problem + f"; dated by "
                                     f"{date.source}"))
    try:  # the name: os.path.basename, and a join with a relative path, inline
        rel = renderer(cfg.layout, cfg.undated_dir).render(src.path.rpartition(b"/")[2],
                                                           src.root, date.when)
    except ValueError as e:
        plan.problems.append(Problem(src.path, "layout", str(e)))
        return None
    want = archive + rel if archive.endswith(b"/") else archive + b"/" + rel
    dest = names.claim(want, cfg.on_name_collision)
    if dest is None:
        plan.problems.append(Problem(src.path, "name-collision",
                                     f"{os.fsdecode(rel)} is taken by other content "
                                     "(on_name_collision = skip)"))
        return None
    return Copy(c, src, dest, date)
