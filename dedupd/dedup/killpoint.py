"""The fault-injection test hook behind every destructive step (never set in production).

DEDUPD_TEST_KILL_AT_STEP=k makes the process SIGKILL itself right after its k-th
step; DEDUPD_TEST_STEP_LOG=FILE appends "n label" per step. A step is a journal
write or a filesystem mutation of the hardlink and cross-drive linkers
(dedup/journal.py), or one extent dedupe call (dedup/extent_group.py). Kept apart
from the journal so that extent passes need not import the index.
"""

from __future__ import annotations

import os
import signal


class StepHook:
    """Counts steps; kills the process at the configured one (see the module doc)."""

    def __init__(self) -> None:
        self.n = 0
        self.kill_at = int(os.environ.get("DEDUPD_TEST_KILL_AT_STEP", "0") or 0)
        self.log = os.environ.get("DEDUPD_TEST_STEP_LOG")

    def __call__(self, label: str) -> None:
        self.n += 1
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{self.n} {label}\n")
        if self.n == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
