"""Parse duplicate reports of other tools into candidate groups (no file access).

Formats (as the tools write them):
  jdupes -j   {"matchSets": [{"fileSize": N, "fileList": [{"filePath": P}, ...]}]}
              paths are as given on jdupes' command line (often relative: --base)
  rmlint -o json   [header, {"type": "duplicate_file", "path", "size", "mtime",
              "checksum", ...}, ..., footer]; a group is the entries sharing a checksum.
              rmlint omits "checksum" when it read nothing: a file whose only twin
              is its own hardlink. Such entries are grouped by (disk_id, inode),
              else by their run in the report (each group starts with its
              "is_original" entry).
  czkawka (dup, JSON save)   {"<size>": [[{"path", "size", "modified_date", "hash"}]]}

Reports may hold non-UTF-8 names: the file is decoded with surrogateescape so
os.fsencode() gives back the exact bytes.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

FORMATS = ("jdupes", "rmlint", "czkawka")


class ReportError(ValueError):
    """The report is not valid JSON of the expected shape."""


@dataclass(frozen=True)
class Claim:
    """What the report says about one file; size/mtime None when it does not say."""

    path: bytes
    size: int | None = None
    mtime: float | None = None


@dataclass(frozen=True)
class CandidateGroup:
    claims: tuple[Claim, ...]


def load(data: bytes, fmt: str | None, base: bytes) -> tuple[str, list[CandidateGroup]]:
    """(format, groups) of a report; `fmt` None means detect it from the shape."""
    try:
        doc = json.loads(data.decode("utf-8", "surrogateescape"))
    except ValueError as e:
        raise ReportError(f"not JSON: {e}") from None
    except RecursionError:
        raise ReportError("not a report: nested too deeply") from None
    fmt = fmt or detect(doc)
    parse = {"jdupes": _jdupes, "rmlint": _rmlint, "czkawka": _czkawka}[fmt]
    try:
        groups = parse(doc, base)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as e:
        raise ReportError(f"not a {fmt} report ({type(e).__name__}: {e})") from None
    return fmt, [g for g in groups if len(g.claims) > 1]


def detect(doc: Any) -> str:
    if isinstance(doc, dict) and "matchSets" in doc:
        return "jdupes"
    if isinstance(doc, list) and any(isinstance(x, dict) and "type" in x for x in doc):
        return "rmlint"
    if isinstance(doc, dict) and all(k.isdigit() for k in doc):
        return "czkawka"
    raise ReportError("unknown report format (give --format jdupes|rmlint|czkawka)")


def _path(p: str, base: bytes) -> bytes:
    b = os.fsencode(p)
    if b"\0" in b:
        raise ValueError(f"a path with a NUL byte: {p!r}")
    return os.path.normpath(os.path.join(base, b))


def _jdupes(doc: Any, base: bytes) -> list[CandidateGroup]:
    out = []
    for ms in doc["matchSets"]:
        size = int(ms["fileSize"])
        out.append(CandidateGroup(tuple(Claim(_path(f["filePath"], base), size)
                                        for f in ms["fileList"])))
    return out


def _rmlint(doc: Any, base: bytes) -> list[CandidateGroup]:
    groups: OrderedDict[str, list[Claim]] = OrderedDict()
    run = 0
    for x in doc:
        if not isinstance(x, dict) or x.get("type") != "duplicate_file":
            continue
        run += bool(x.get("is_original"))
        mtime = x.get("mtime")
        groups.setdefault(_rmlint_group(x, run), []).append(
            Claim(_path(x["path"], base), int(x["size"]),
                  None if mtime is None else float(mtime)))
    return [CandidateGroup(tuple(c)) for c in groups.values()]


def _rmlint_group(x: dict[str, Any], run: int) -> str:
    if x.get("checksum") is not None:
        return f"sum:{x['checksum']}"
    if x.get("inode") is not None:
        return f"inode:{x.get('disk_id')}:{x['inode']}"
    return f"run:{run}"


def _czkawka(doc: Any, base: bytes) -> list[CandidateGroup]:
    out = []
    for size, groups in doc.items():
        for g in groups:
            out.append(CandidateGroup(tuple(
                Claim(_path(e["path"], base), int(e.get("size", size)),
                      None if e.get("modified_date") is None else float(e["modified_date"]))
                for e in g)))
    return out
