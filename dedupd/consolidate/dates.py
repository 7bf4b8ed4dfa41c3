"""Capture dates: EXIF DateTimeOriginal for JPEG/TIFF/HEIC, else the file's mtime.

The EXIF reader (`exifread`) gets a file object that counts the bytes it reads,
so the consolidation's bytes_read counter stays honest. Damaged images are
normal in old backups: any failure of the parser means "no EXIF date", never
an aborted import.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dedupd import handles

# exifread logs every malformed tag at WARNING; a corrupt photo is reported once by us.
logging.getLogger("exifread").setLevel(logging.CRITICAL)

_RD = handles.FILE_FLAGS
MIN_YEAR, MAX_YEAR = 1900, 2200


@dataclass(frozen=True)
class CaptureDate:
    when: datetime | None  # None: no usable date (goes to undated_dir)
    source: str  # "exif", "mtime" or "none"
    exif_problem: str = ""  # why EXIF was not usable, when it was tried and failed


# Reads and seeks the EXIF parser may make in one file. exifread follows sizes and
# offsets as the file gives them: a HEIC box of 64-bit size 0 ends where it starts,
# and its box loop seeks back to it forever (a 40-byte file hung the consolidation).
# A real photo's date takes a few hundred; past this the file has no EXIF date.
MAX_EXIF_OPS = 100_000


class ExifLoop(Exception):
    """The EXIF parser used up MAX_EXIF_OPS on one file (a crafted or broken one)."""


class _Counting:
    """A read-only binary file that counts the bytes read through it, and ends the
    parse (ExifLoop) past MAX_EXIF_OPS reads and seeks."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.nread, self.ops = fh, 0, 0

    def _op(self) -> None:
        self.ops += 1
        if self.ops > MAX_EXIF_OPS:
            raise ExifLoop(f"more than {MAX_EXIF_OPS} reads and seeks")

    def read(self, n: int = -1) -> bytes:
        self._op()
        data: bytes = self.fh.read(n)
        self.nread += len(data)
        return data

    def seek(self, off: int, whence: int = 0) -> int:
        self._op()
        return int(self.fh.seek(off, whence))

    def tell(self) -> int:
        return int(self.fh.tell())


def image_kind(head: bytes) -> str | None:
    """jpeg, tiff or heic by magic bytes (names lie; content does not)."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim",
                                                b"heis", b"hevc", b"avif"):
        return "heic"
    return None


def parse_exif_datetime(text: str) -> datetime | None:
    """'YYYY:MM:DD HH:MM:SS' (seconds optional) -> datetime, or None if unusable."""
    text = text.strip().rstrip("\x00").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d"):
        try:
            dt = datetime.strptime(text[: len(fmt) + 2], fmt)
        except ValueError:
            continue
        return dt if MIN_YEAR <= dt.year <= MAX_YEAR else None
    return None


def exif_date(path: bytes, data: bytes | None = None) -> tuple[datetime | None, str, int]:
    """(date or None, problem, bytes read) for one file, or for its bytes when they are
    in memory already (data: nothing is read then); never raises for bad content."""
    if data is not None:
        if image_kind(data[:12]) is None:  # most files: no file object for 12 bytes
            return None, "", 0
        when, problem, _ = _exif_date(io.BytesIO(data))
        return when, problem, 0
    try:
        fd = handles.open_at(path, _RD)
    except OSError as e:
        return None, f"cannot open: {e.strerror}", 0
    with open(fd, "rb") as fh:
        return _exif_date(fh)


def _exif_date(fh: Any) -> tuple[datetime | None, str, int]:
    """exif_date of an open binary file positioned at its start."""
    head = fh.read(12)
    nread = len(head)
    if image_kind(head) is None:
        return None, "", nread
    fh.seek(0)
    counted = _Counting(fh)
    # imported at the first image, not with the module: it and what it imports (XML,
    # fractions, decimal) were a tenth of every import's start-up
    import exifread

    try:
        tags = exifread.process_file(
            counted,  # type: ignore[arg-type]  # duck-typed: read/seek/tell suffice
            details=False, extract_thumbnail=False, stop_tag="DateTimeOriginal")
    except Exception as e:  # noqa: BLE001 - a third-party parser on untrusted bytes
        return None, f"unreadable EXIF ({type(e).__name__})", nread + counted.nread
    nread += counted.nread
    tag = tags.get("EXIF DateTimeOriginal")
    if tag is None:
        return None, "no DateTimeOriginal", nread
    when = parse_exif_datetime(str(tag))
    return when, "" if when else f"unusable DateTimeOriginal {str(tag)!r}", nread


def capture_date(path: bytes, mtime_ns: int, date_from: tuple[str, ...],
                 data: bytes | None = None) -> tuple[CaptureDate, int]:
    """The first usable date in date_from order, and the bytes read to find it (none
    when the file's bytes are given)."""
    problem, nread = "", 0
    for how in date_from:
        if how == "exif":
            if data is not None and image_kind(data[:12]) is None:
                problem = ""  # exif_date's answer for bytes of no image (most files)
                continue
            when, problem, n = exif_date(path, data)
            nread += n
            if when is not None:
                return CaptureDate(when, "exif"), nread
        elif how == "mtime" and mtime_ns > 0:
            return CaptureDate(datetime.fromtimestamp(mtime_ns / 1e9), "mtime", problem), nread
    return CaptureDate(None, "none", problem), nread
