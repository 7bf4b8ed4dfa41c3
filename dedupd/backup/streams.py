"""Which `zfs send` flags a backup stream is made with, and when a chain may go on.

Detected, never assumed: the single-letter flags `zfs send` and `zfs receive`
list in their usage (OpenZFS 2.2: `send [-DLPbcehnpsUVvw]`, `receive
[-vMnsFhu]`; zfs-fuse: `send [-RDp]`, `receive [-vnF]`), `zfs bookmark`, and the
dataset's `encryption` property (absent on zfs-fuse: off).

The flags of a stream (recorded in its manifest):
- raw (`-w`) when `raw = true`, or when `raw` is unset and the dataset is
  encrypted: a non-raw send of an encrypted dataset uploads plaintext and fails
  outright when its key is not loaded. Raw implies -L -e -c.
- otherwise `-L -e -c` where supported: without -L large blocks come back as
  128K blocks (and OpenZFS 2.3 refuses a send of a large_microzap dataset
  without -L or -w); without -c the data is decompressed, then recompressed.
- `-p` where supported, so a restore keeps compression, recordsize and the like;
  on OpenZFS only: zfs-fuse lists -p, but a `zfs send -p` killed mid-stream (an
  upload that failed) leaves its snapshot "busy" until the daemon restarts.

An incremental must be made with its base's flags (`zfs receive` rejects a
chain whose raw-ness changes, and -L must not change within a chain); when the
base's flags cannot be used any more, the job sends a new full instead.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache

from dedupd import proc
from dedupd.errors import DedupdError

_USAGE = re.compile(r"\b(send|receive) \[-([A-Za-z]+)\]")


class StreamError(DedupdError):
    """The stream this job needs cannot be made here."""


@dataclass(frozen=True)
class Caps:
    send: frozenset[str]  # single-letter `zfs send` flags
    receive: frozenset[str]
    bookmarks: bool
    openzfs: bool  # `zfs version` answers (OpenZFS >= 0.8; zfs-fuse does not)


def _usage_letters(sub: str, r: proc.Result) -> frozenset[str]:
    letters: set[str] = set()
    for cmd, flags in _USAGE.findall(r.stderr + r.text):
        if cmd == sub:
            letters.update(flags)
    return frozenset(letters)


def _run_all(*argvs: list[str]) -> list[proc.Result]:
    """Each command (unchecked) in a thread of its own, all at once: four probes
    take the time of the slowest (each mostly waits on zfs), not their sum."""
    out: list[proc.Result | BaseException | None] = [None] * len(argvs)

    def one(i: int) -> None:
        try:
            out[i] = proc.run(argvs[i], check=False, timeout=30)
        except BaseException as e:  # raised below, in the caller's thread
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,), name="dedupd-zfs-probe", daemon=True)
               for i in range(len(argvs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return [r for r in out if isinstance(r, proc.Result)]


@lru_cache(maxsize=1)
def caps() -> Caps:
    """What the installed `zfs` offers (cached for the process)."""
    bm, version, send, receive = _run_all(["zfs", "bookmark"], ["zfs", "version"],
                                          ["zfs", "send"], ["zfs", "receive"])
    return Caps(_usage_letters("send", send), _usage_letters("receive", receive),
                "unrecognized command" not in bm.stderr, version.returncode == 0)


def encryption(dataset: str) -> str:
    """The dataset's `encryption` property; "off" where zfs has no such property."""
    r = proc.run(["zfs", "get", "-H", "-o", "value", "encryption", dataset], check=False,
                 timeout=60)
    value = r.text.strip()
    return value if r.returncode == 0 and value not in ("", "-") else "off"


@dataclass(frozen=True)
class Wanted:
    """A dataset's new-full flags and its `encryption` (recorded in the manifest):
    one set of probes answers both, so the manifest asks zfs nothing again."""

    flags: tuple[str, ...]
    encryption: str


def wanted_soon(dataset: str, raw: bool | None) -> Future[Wanted]:
    """wanted() and encryption() started in a thread at once (their zfs probes are
    short processes that can overlap the caller's own start); result() returns
    them or raises."""
    fut: Future[Wanted] = Future()

    def go() -> None:
        try:
            c = threading.Thread(target=caps, name="dedupd-zfs-caps", daemon=True)
            c.start()  # at the same time as encryption (caps() is cached: _flags reuses it)
            enc = encryption(dataset)
            c.join()
            fut.set_result(Wanted(_flags(enc != "off" if raw is None else raw), enc))
        except BaseException as e:  # raised by result(), in the caller's thread
            fut.set_exception(e)

    threading.Thread(target=go, name="dedupd-zfs-probe", daemon=True).start()
    return fut


def wanted(dataset: str, raw: bool | None) -> tuple[str, ...]:
    """The flags a new full stream of dataset is made with (see the module doc)."""
    return _flags(encryption(dataset) != "off" if raw is None else raw)


def _flags(is_raw: bool) -> tuple[str, ...]:
    c = caps()
    if is_raw and "w" not in c.send:
        raise StreamError("raw = true needs `zfs send -w` (OpenZFS); this zfs lacks it")
    flags = ["-w"] if is_raw else [f"-{x}" for x in "Lec" if x in c.send]
    if "p" in c.send and c.openzfs:
        flags.append("-p")
    return tuple(flags)


def stream_flags(send_flags: Sequence[str]) -> tuple[str, ...]:
    """A manifest's send_flags without the incremental source (-i/-I NAME)."""
    out: list[str] = []
    skip = False
    for f in send_flags:
        if skip:
            skip = False
        elif f in ("-i", "-I"):
            skip = True
        else:
            out.append(f)
    return tuple(out)


def continue_with(base_flags: Sequence[str], now: Sequence[str]) -> tuple[str, ...] | None:
    """The flags for an incremental on a base sent with base_flags, or None when a
    new full is needed: raw-ness changed, or the base used a flag this zfs lacks."""
    base = stream_flags(base_flags)
    if ("-w" in base) != ("-w" in now):
        return None
    if any(f.lstrip("-") not in caps().send for f in base):
        return None
    return base
