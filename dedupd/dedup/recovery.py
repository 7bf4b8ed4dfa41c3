"""Finish or roll back every unfinished journal operation (`dedupd recover`).

Runs before anything else touches a volume. Decisions are made from what is on
disk *now*, identified by inode numbers recorded in the journal, never from
names alone, so running recovery twice (or after a crash inside recovery) is
safe: each step is idempotent.

Rule of thumb: an operation whose new name is already in place is finished;
otherwise the extra names it made are removed (rolled back). A duplicate is
only ever removed after re-checking its bytes against the kept copy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass

from dedupd import handles
from dedupd.config import VolumeConfig
from dedupd.dedup import journal as J
from dedupd.dedup.lock import lock_root, volume_lock
from dedupd.dedup.verify import Refused, same_bytes
from dedupd.errors import TemporaryFailure
from dedupd.files.events import Ident
from dedupd.fsops import link as fs
from dedupd.fsops import names
from dedupd.index.store import Store


@dataclass(frozen=True)
class Recovered:
    op: int
    kind: str
    before: str
    after: str
    detail: str

    def as_json(self) -> dict[str, object]:
        return {"op": self.op, "kind": self.kind, "before": self.before, "after": self.after,
                "detail": self.detail}


def _ino(path: bytes | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = handles.lstat(path)
    except (FileNotFoundError, handles.PathChanged):
        # A name whose directory was swapped or moved away is not "there": every
        # decision below then keeps both copies (never removes on a guess).
        return None
    return (st.st_dev, st.st_ino)


def plan(rec: J.OpRecord) -> tuple[str, str]:
    """(final state, what recovery will do) for one unfinished op; changes nothing."""
    if rec.spec.kind == "crossdrive":
        return _plan_cross(rec)
    return _plan_hardlink(rec)


def _plan_hardlink(rec: J.OpRecord) -> tuple[str, str]:
    sp = rec.spec
    if _ino(sp.dup_path) == (sp.keep_dev, sp.keep_ino):
        return J.DONE, "the duplicate's name already links to the kept file: finish"
    if sp.hold_path is not None and _ino(sp.hold_path) is not None:
        return J.ROLLED_BACK, "the name is held: give it back (never over a newer " \
            "file), remove our extra names"
    return J.ROLLED_BACK, "the name was not replaced: remove our extra names, if any"


def _plan_cross(rec: J.OpRecord) -> tuple[str, str]:
    sp = rec.spec
    if sp.hold_path is not None and _ino(sp.hold_path) is not None:
        return J.ROLLED_BACK, "the duplicate's name is held: give it back (never over " \
            "a newer file), then finish or roll back"
    if not _dup_present(sp):
        if _ino(sp.dest_path or sp.keep_path) == (sp.keep_dev, sp.keep_ino):
            return J.DONE, "the duplicate is already gone: finish"
        return J.FAILED, "the duplicate and the new link are both gone: leave as is"
    if rec.state == J.REMOVING:
        return J.DONE, "verified before the crash: re-check bytes, remove the duplicate"
    return J.ROLLED_BACK, "remove the new link on the kept branch, if it was made"


def _dup_present(sp: J.OpSpec) -> bool:
    return _ino(sp.dup_path) == (sp.dup_dev, sp.dup_ino)


def recover_one(jr: J.Journal, rec: J.OpRecord) -> Recovered:
    """Resolve one unfinished op and record its final state."""
    try:
        if rec.spec.kind == "crossdrive":
            after, detail = _recover_cross(rec)
        else:
            after, detail = _recover_hardlink(rec)
    except OSError as e:
        after, detail = J.FAILED, f"recovery failed: {e}; left as is"
    jr.set(rec.id, after, f"recovered from {rec.state}: {detail}")
    return Recovered(rec.id, rec.spec.kind, rec.state, after, detail)


def _recover_hardlink(rec: J.OpRecord) -> tuple[str, str]:
    return resolve_hardlink(rec.spec)


def resolve_hardlink(sp: J.OpSpec) -> tuple[str, str]:
    """Finish or undo a hardlink op, decided by inodes, not by the journal state
    (which may lag after a power cut). Idempotent."""
    hold = sp.hold_path
    if _ino(sp.dup_path) == (sp.keep_dev, sp.keep_ino):
        note = ""
        # The old duplicate sits at the temp name after an exchange, at the hold name
        # without. It goes only if the name has its bytes: an inode number is reused by
        # a file made since (the kept file removed, a new one saved at the name).
        for old in (sp.temp_path, hold):
            if old is not None and _ino(old) == (sp.dup_dev, sp.dup_ino):
                if _same_bytes(sp.dup_path, old):
                    fs.unlink_if_inode(old, sp.dup_dev, sp.dup_ino)
                else:
                    note = f"; the name's bytes differ: the duplicate stays at {os.fsdecode(old)}"
        if sp.temp_path is not None:
            fs.unlink_if_inode(sp.temp_path, sp.keep_dev, sp.keep_ino)
        return J.DONE, "finished: name links to the kept file" + note
    detail = _settle(sp)
    if sp.temp_path is not None:
        fs.unlink_if_inode(sp.temp_path, sp.keep_dev, sp.keep_ino)
    if sp.quarantine_path is not None:
        fs.unlink_if_inode(sp.quarantine_path, sp.dup_dev, sp.dup_ino)
    return J.ROLLED_BACK, "rolled back: duplicate left as it was" + detail


def settle_hold(sp: J.OpSpec, hold: bytes) -> str:
    """An op stopped while the duplicate's name was held (a hardlink swap without
    exchange, a crossdrive removal): whatever the hold name has (it was taken from the
    duplicate's name, an editor's save too) gets that name back, never over a file
    made there since. If one was (a save while the name was missing), the held file
    goes only if it is another name of that file, or the duplicate with the kept
    file's bytes (as the save's rename would have removed it); anything else stays
    under the hold name. Returns a note for the row."""
    held = _ino(hold)
    if held is None or names.give_back(hold, sp.dup_path):
        return ""
    now = _ino(sp.dup_path)
    # the held file goes only where the name has a file again: a give-back that failed
    # otherwise (the link limit, an I/O error) must not leave the name with nothing
    if now is not None and (held == now or (
            held == (sp.dup_dev, sp.dup_ino) and _same_as_keep(sp, hold))):
        fs.unlink_if_inode(hold, *held)
        return ""
    return f"; a file was saved at the name meanwhile: the held one stays at {os.fsdecode(hold)}"


def _same_as_keep(sp: J.OpSpec, path: bytes) -> bool:
    """path has the kept file's bytes (compared now, both read by handle)."""
    return _ino(sp.keep_path) == (sp.keep_dev, sp.keep_ino) and _same_bytes(sp.keep_path, path)


def _same_bytes(ref: bytes, path: bytes) -> bool:
    """path has the bytes of the file at ref (compared now, both read by handle)."""
    try:
        rst, st = handles.lstat(ref), handles.lstat(path)
        return same_bytes(ref, Ident.of(rst), path, Ident.of(st))
    except (OSError, Refused):
        return False


def _settle(sp: J.OpSpec) -> str:
    """settle_hold where the op has a hold name; its note for the row."""
    return "" if sp.hold_path is None else settle_hold(sp, sp.hold_path)


def _recover_cross(rec: J.OpRecord) -> tuple[str, str]:
    sp = rec.spec
    note = _settle(sp)
    ref = sp.dest_path or sp.keep_path
    if rec.state == J.REMOVING and _dup_present(sp) \
            and _ino(ref) == (sp.keep_dev, sp.keep_ino) and finish_remove(sp):
        return J.DONE, "finished: duplicate removed after a fresh byte compare" + note
    return _finish_or_undo_cross(sp, note)


def recover_cross_now(sp: J.OpSpec) -> tuple[str, str]:
    """Finish if the duplicate is already gone (states may lag), else undo; a held
    duplicate's name is given back first."""
    return _finish_or_undo_cross(sp, _settle(sp))


def _finish_or_undo_cross(sp: J.OpSpec, note: str) -> tuple[str, str]:
    ref = sp.dest_path or sp.keep_path
    if not _dup_present(sp):
        # Removed before the crash: never touch the new link now.
        if _ino(ref) == (sp.keep_dev, sp.keep_ino):
            return J.DONE, "finished: the duplicate was already removed" + note
        return J.FAILED, "both the duplicate and the new link are gone (changed by " \
            f"someone else?); the kept copy is {os.fsdecode(sp.keep_path)}" + note
    undo_cross(sp)
    return J.ROLLED_BACK, "rolled back: new link removed, duplicate kept" + note


def undo_cross(sp: J.OpSpec) -> None:
    """Drop the names a crossdrive op made; only while the duplicate still exists."""
    if not _dup_present(sp):
        return
    if sp.dest_path is not None:
        fs.unlink_if_inode(sp.dest_path, sp.keep_dev, sp.keep_ino)
    if sp.quarantine_path is not None:
        fs.unlink_if_inode(sp.quarantine_path, sp.dup_dev, sp.dup_ino)
    fs.rmdirs_if_empty(sp.dirs)


def finish_remove(sp: J.OpSpec) -> bool:
    """Remove the duplicate name if it is still the recorded, unchanged copy.

    True when the duplicate is gone (removed now or already). False when it
    changed: the caller then rolls back so the changed copy stays visible.
    """
    ref = sp.dest_path or sp.keep_path
    try:
        st = handles.lstat(sp.dup_path)
    except FileNotFoundError:
        return True
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
            sp.dup_dev, sp.dup_ino, sp.size, sp.dup_mtime_ns):
        return False
    try:
        kst = handles.lstat(ref)
        if (kst.st_dev, kst.st_ino) != (sp.keep_dev, sp.keep_ino):
            return False
        if not same_bytes(ref, Ident.of(kst), sp.dup_path, Ident.of(st)):
            return False
    except Refused:
        return False
    if sp.quarantine_path is not None and _ino(sp.quarantine_path) is None:
        fs.make_private_dirs(os.path.dirname(sp.quarantine_path))
        fs.link_exact(sp.dup_path, sp.quarantine_path, expect=(sp.dup_dev, sp.dup_ino))
    fs.unlink_if_inode(sp.dup_path, sp.dup_dev, sp.dup_ino, hold=sp.hold_path)
    return True


def recover_all(jr: J.Journal, volume: str | None = None,
                dry_run: bool = False) -> list[Recovered]:
    """Resolve every unfinished op (of one volume, or all). Idempotent."""
    out = []
    for rec in jr.unfinished(volume):
        if dry_run:
            after, detail = plan(rec)
            out.append(Recovered(rec.id, rec.spec.kind, rec.state, after, "would: " + detail))
        else:
            out.append(recover_one(jr, rec))
    return out


log = logging.getLogger("dedupd.recovery")


def recover_volumes(store: Store, volumes: Mapping[str, VolumeConfig], *,
                    only: str | None = None, dry_run: bool = False,
                    skip_busy: bool = False) -> list[Recovered]:
    """Resolve every volume's unfinished ops (or only volume `only`'s), one volume at
    a time: the daemon at start and `dedupd recover` (blocking: run it in a thread).

    A volume named in `volumes` is locked while it is recovered, so a pass running
    elsewhere (`dedupd run --once`) is never taken for an interrupted one. A busy
    volume raises TemporaryFailure, or with skip_busy is left to its next pass (which
    recovers it first). Idempotent.
    """
    jr = J.Journal(store)
    done: list[Recovered] = []
    try:
        for name in sorted({r.spec.volume for r in jr.unfinished(only)}):
            v = volumes.get(name)
            lock = volume_lock(lock_root(v.kind, v.path, v.branches)) if v else nullcontext()
            try:
                with lock:
                    done += recover_all(jr, name, dry_run=dry_run)
            except TemporaryFailure as e:
                if not skip_busy:
                    raise
                log.warning("volume %s: not recovered now: %s", name, e)
    finally:
        jr.close()
    return done
