"""`dedupd where PATH`: where an archive file came from, where a source file went,
and every other copy of its content the index knows, on any host."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from typing import Any

from dedupd.commands.common import add_common, load_config, nonempty, open_store
from dedupd.hashing import FileChanged, read_hashes
from dedupd.index import provenance as prov
from dedupd.index.inventory import Copy, copies, host_names, indexed
from dedupd.index.provenance import Provenance
from dedupd.index.store import IndexedFile, Store
from dedupd.output import print_json, show_path

HELP = """\
Answer from the provenance that `dedupd consolidate` records:

  for a file in an archive: every source path that held the same content,
  and when it was first and last seen there;
  for a file in a source share: the archive file that holds its content.

A file not recorded by path (say, new in a share since the last import) is
hashed and looked up by content ("by_content" in --json). Run `dedupd
consolidate NAME` to refresh the records.

Then every other copy of the same content (size and whole-file hash) in the
index, on this host and on every host sharing it (a PostgreSQL inventory),
printed as HOST:PATH. The content comes from the index when the file is
unchanged since it was scanned, else the file is read once. PATH may also be
HOST:PATH, a file of another host, answered from that host's rows.
Exit status 1 when nothing is known.

examples:
  dedupd where /mnt/archive/2019/07/IMG_0042.JPG
  dedupd where --json /mnt/backup-disk/DCIM/IMG_0042.JPG
  dedupd where nas1:/tank/photos/2019/IMG_0042.JPG
"""


def register(sub: Any) -> None:
    p = sub.add_parser("where", help="show where an archive file came from (or went)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", type=nonempty, metavar="PATH",
                   help="a file (an archive or source file, any indexed file), or HOST:PATH")
    add_common(p)
    p.set_defaults(func=run)


def _doc(p: Provenance) -> dict[str, Any]:
    return {"consolidation": p.consolidation, "source": os.fsdecode(p.source_path),
            "archive": os.fsdecode(p.archive_path), "size": p.size,
            "first_seen": p.first_seen, "last_seen": p.last_seen}


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    store = open_store(args, cfg)
    sources: list[Provenance] = []
    archived: list[Provenance] = []
    by_content = False
    try:
        host, path = _target(store, args.path)
        content = _content(store, host, path)
        if host is None:
            sources = prov.sources_of(store, path)
            archived = [] if sources else prov.archive_of(store, path)
            if not sources and not archived and content is not None:
                archived = _archived_content(store, *content)
                by_content = bool(archived)
        me = store.host_identity.name if host is None else host_names(store)[host]
        others = [] if content is None else [
            c for c in copies(store, *content) if not (c.host == me and path in c.paths)]
    finally:
        store.close()
    role = "archive" if sources else "source" if archived else "unknown"
    if args.json:
        print_json({"path": os.fsdecode(path), "host": me, "role": role,
                    "by_content": by_content,
                    "sources": [_doc(p) for p in sources],
                    "archive": [_doc(p) for p in archived],
                    "copies": [_copy_doc(c) for c in others]})
    else:
        _print_text(path, sources, archived, by_content, bool(others))
        _print_copies(path, others)
    return 0 if role != "unknown" or others else 1


def _target(store: Store, arg: str) -> tuple[int | None, bytes]:
    """(None, real path) for a file here; (host id, path) for HOST:/PATH naming a
    host of the index, when no such file exists here."""
    raw = os.fsencode(arg)
    name, sep, rest = raw.partition(b":")
    if sep and rest.startswith(b"/") and not os.path.lexists(raw):
        hosts = {os.fsencode(n): i for i, n in host_names(store).items()}
        if name in hosts:
            return hosts[name], os.path.normpath(rest)
    # Rows hold real paths (symlinks resolved); the file itself may be gone by now.
    return None, os.path.realpath(raw)


def _content(store: Store, host: int | None, path: bytes) -> tuple[int, bytes] | None:
    """(size, full hash) of path: the index's when the file is unchanged since it was
    hashed (or lives on another host), else read now; None when unknown."""
    row = indexed(store, path, host)
    if host is not None:
        return None if row is None or row[4] is None else (row[1], row[4])
    try:
        st = os.lstat(path)
    except OSError:
        return None if row is None or row[4] is None else (row[1], row[4])
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return None
    if row is not None and row[4] is not None and row[:4] == (
            st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
        return st.st_size, row[4]
    f = IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                    None, None, 0, (path,))
    try:
        full = read_hashes(f, True).full
    except (OSError, FileChanged):
        return None
    return None if full is None else (st.st_size, full)


def _archived_content(store: Store, size: int, full: bytes) -> list[Provenance]:
    """A file not recorded by path (new in a share, or elsewhere): archive files
    recorded by a consolidation with its content."""
    seen: set[tuple[str, bytes]] = set()
    out = []
    for p in prov.by_content(store, full):
        if p.size == size and (p.consolidation, p.archive_path) not in seen:
            seen.add((p.consolidation, p.archive_path))
            out.append(p)
    return out


def _copy_doc(c: Copy) -> dict[str, Any]:
    doc: dict[str, Any] = {"host": c.host, "path": os.fsdecode(c.path)}
    if len(c.paths) > 1:
        doc["hardlinks"] = [os.fsdecode(p) for p in c.paths[1:]]
    return doc


def _print_copies(path: bytes, others: list[Copy]) -> None:
    if not others:
        return
    sys.stdout.write(f"{show_path(path)}: the same content is also at:\n")
    for c in others:
        for p in c.paths:
            sys.stdout.write(f"  {c.host}:{show_path(p)}\n")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _print_text(path: bytes, sources: list[Provenance], archived: list[Provenance],
                by_content: bool, copies_known: bool) -> None:
    out = sys.stdout
    if sources:
        out.write(f"{show_path(path)} (archive file) came from:\n")
        for p in sources:
            out.write(f"  {show_path(p.source_path)}  [{p.consolidation}, seen "
                      f"{_when(p.first_seen)} .. {_when(p.last_seen)}]\n")
    elif archived:
        if by_content:
            out.write(f"{show_path(path)} is not recorded, but its content (hashed now) is "
                      "in the archive:\n")
            for p in archived:
                out.write(f"  {show_path(p.archive_path)} [{p.consolidation}]\n")
            return
        for p in archived:
            out.write(f"{show_path(path)} is in the archive as {show_path(p.archive_path)} "
                      f"[{p.consolidation}, last seen {_when(p.last_seen)}]\n")
    elif not copies_known:
        sys.stderr.write(f"dedupd: {show_path(path)}: no provenance recorded and no other "
                         "copy in the index (not scanned or imported yet?)\n")
