"""The step process's pipe protocol, for both ends (stepper.py serves it in the
child and sends it from the daemon; workers.py speaks it through a StepChannel).

Over a multiprocessing Pipe, strictly request -> reply, one at a time:
  ("step", VolumeConfig, dry_run, force_rescan) -> StepOutcome
  ("close", volume name)                         -> None  (abandon the pass between steps)
  ("exit",)                                      -> None  (close every pass, then exit)
A reply is ("ok", value) or ("err", message). EOF on the pipe means the other
side is gone: the child exits, the parent restarts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from dedupd.config import VolumeConfig
from dedupd.volumes import PassReport, Step

STEP, CLOSE, EXIT = "step", "close", "exit"
OK, ERR = "ok", "err"
Request = tuple[Any, ...]


@dataclass(frozen=True)
class StepOutcome:
    """What one step request produced (handed from the step thread to the loop)."""

    step: Step | None = None
    counters: dict[str, int] | None = None
    report: PassReport | None = None  # set when the pass is over (actions left out)
    actions: int = 0  # how many actions the finished pass did (or would do)


def step_request(vol: VolumeConfig, dry_run: bool, force_rescan: bool) -> Request:
    return (STEP, vol, dry_run, force_rescan)


def close_request(name: str) -> Request:
    return (CLOSE, name)


class StepChannel(Protocol):
    """The parent's end: send one request, block for its reply (raises on "err")."""

    def call(self, *req: Any) -> Any: ...
