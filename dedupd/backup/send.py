"""The `zfs send` stage: argv for a full or incremental stream of one snapshot.

A stream is fully described by (snapshot, base snapshot, flags); the manifest
records those flags so a by-hand restore knows what it is replaying. Which
flags a job uses is decided in streams.py.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from dedupd import proc
from dedupd.backup.snapshots import Snapshot, SnapshotError


@dataclass(frozen=True)
class SendSpec:
    snapshot: Snapshot
    base: Snapshot | None  # None: a full stream
    stream: tuple[str, ...] = ()  # e.g. ("-L", "-e", "-c", "-p") or ("-w", "-p")

    @property
    def flags(self) -> tuple[str, ...]:
        f = list(self.stream)
        if self.base is not None:
            f += ["-i", self.base.name]
        return tuple(f)

    def argv(self) -> list[str]:
        if self.base is not None and self.base.dataset != self.snapshot.dataset:
            raise SnapshotError(f"base {self.base.name} is not a snapshot of "
                                f"{self.snapshot.dataset}")
        return ["zfs", "send", *self.flags, self.snapshot.name]


def start(spec: SendSpec) -> subprocess.Popen[bytes]:
    """Spawn `zfs send`; stdout is a pipe the caller must drain."""
    return proc.spawn(spec.argv())
