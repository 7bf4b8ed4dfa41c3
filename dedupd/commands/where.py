"""`dedupd where PATH`: where an archive file came from, or where a source file went."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from typing import Any

from dedupd.commands.common import add_common, load_config, open_store
from dedupd.hashing import FileChanged, read_hashes
from dedupd.index import provenance as prov
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
consolidate NAME` to refresh the records. Exit status 1 when nothing is known.

examples:
  dedupd where /mnt/archive/2019/07/IMG_0042.JPG
  dedupd where --json /mnt/backup-disk/DCIM/IMG_0042.JPG
"""


def register(sub: Any) -> None:
    p = sub.add_parser("where", help="show where an archive file came from (or went)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH", help="an archive file or a source file")
    add_common(p)
    p.set_defaults(func=run)


def _doc(p: Provenance) -> dict[str, Any]:
    return {"consolidation": p.consolidation, "source": os.fsdecode(p.source_path),
            "archive": os.fsdecode(p.archive_path), "size": p.size,
            "first_seen": p.first_seen, "last_seen": p.last_seen}


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    # Rows hold real paths (symlinks resolved); the file itself may be gone by now.
    path = os.path.realpath(os.fsencode(args.path))
    store = open_store(args, cfg)
    by_content = False
    try:
        sources = prov.sources_of(store, path)
        archived = [] if sources else prov.archive_of(store, path)
        if not sources and not archived:
            archived = _same_content(store, path)
            by_content = bool(archived)
    finally:
        store.close()
    role = "archive" if sources else "source" if archived else "unknown"
    if args.json:
        print_json({"path": os.fsdecode(path), "role": role, "by_content": by_content,
                    "sources": [_doc(p) for p in sources],
                    "archive": [_doc(p) for p in archived]})
    else:
        _print_text(path, sources, archived, by_content)
    return 0 if role != "unknown" else 1


def _same_content(store: Store, path: bytes) -> list[Provenance]:
    """A file not recorded by path (new in a share, or elsewhere): hash it and look
    the content up. Only archive files recorded by a consolidation are found."""
    try:
        st = os.lstat(path)
    except OSError:
        return []
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return []
    f = IndexedFile(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                    None, None, 0, (path,))
    try:
        full = read_hashes(f, True).full
    except (OSError, FileChanged):
        return []
    seen: set[tuple[str, bytes]] = set()
    out = []
    for p in prov.by_content(store, full or b""):
        if p.size == st.st_size and (p.consolidation, p.archive_path) not in seen:
            seen.add((p.consolidation, p.archive_path))
            out.append(p)
    return out


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _print_text(path: bytes, sources: list[Provenance], archived: list[Provenance],
                by_content: bool) -> None:
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
    else:
        sys.stderr.write(f"dedupd: {show_path(path)}: no provenance recorded "
                         "(not imported by `dedupd consolidate` yet?)\n")
