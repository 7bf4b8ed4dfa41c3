"""Extent dedupe planning: which file is the reference, which are destinations, in
what batches. Pure: takes facts gathered by the caller, returns a plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Member:
    """One distinct inode of a group of identical files, with the facts planning needs."""

    key: tuple[int, int]
    path: bytes
    mtime_ns: int
    readonly: bool = False  # in a read-only snapshot: may be the source only
    shares: bool = False  # already shares some extents with another file
    done: bool = False  # confirmed sharing with the group's reference earlier


@dataclass(frozen=True)
class Plan:
    reference: Member
    batches: tuple[tuple[Member, ...], ...]  # destinations, each batch <= batch_size
    skipped_done: tuple[Member, ...] = ()
    skipped_readonly: tuple[Member, ...] = ()

    @property
    def destinations(self) -> tuple[Member, ...]:
        return tuple(m for b in self.batches for m in b)


def choose_reference(members: Sequence[Member],
                     remembered: tuple[int, int] | None = None) -> Member:
    """The remembered reference if still in the group; else a file already sharing
    extents (its blocks are the ones to keep); else the oldest (mtime, then inode).

    Read-only snapshot files are fine references: a dedupe only reads the source.
    """
    if not members:
        raise ValueError("empty group")
    if remembered is not None:
        for m in members:
            if m.key == remembered:
                return m
    pool = [m for m in members if m.shares] or list(members)
    return min(pool, key=lambda m: (m.mtime_ns, m.key, m.path))


def plan_group(members: Sequence[Member], batch_size: int,
               remembered: tuple[int, int] | None = None) -> Plan | None:
    """Plan one group; None when there is nothing to do (fewer than two members).

    Destinations exclude the reference, read-only members and members already
    confirmed sharing with this reference; batches hold at most batch_size.
    """
    if len(members) < 2 or batch_size < 1:
        return None
    ref = choose_reference(members, remembered)
    same_ref = remembered is None or remembered == ref.key
    dests, done, ro = [], [], []
    for m in members:
        if m.key == ref.key:
            continue
        if m.readonly:
            ro.append(m)
        elif m.done and same_ref:
            done.append(m)
        else:
            dests.append(m)
    dests.sort(key=lambda m: (m.path, m.key))
    return Plan(ref, batched(dests, batch_size), tuple(done), tuple(ro))


def batched(members: Sequence[Member], batch_size: int) -> tuple[tuple[Member, ...], ...]:
    """Split destinations into batches of at most batch_size (the kernel's per-call cap)."""
    n = max(1, batch_size)
    return tuple(tuple(members[k:k + n]) for k in range(0, len(members), n))
