"""Test-only entry point: `python daemon_entry.py ARGS...` == `dedupd ARGS...`.

With DEDUPD_TEST_SLOW_KIND=KIND set, volumes of KIND get a pass whose every step
sleeps DEDUPD_TEST_SLOW_SECONDS (default 30): the stop-timeout test needs a
step that overruns. Production code has no hook for any of this: the
registrations happen in this process before dedupd.cli.main(), and the step
process inherits them (it is forked).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

from dedupd.cli import main
from dedupd.config import VolumeConfig
from dedupd.index.store import Store
from dedupd.volumes import KINDS, PassOptions, PassReport, Step
from dedupd.volumes.pipeline import Pass, build


class SlowPass:
    """The kind's own pass, except that every step sleeps and none ever ends."""

    def __init__(self, vol: VolumeConfig, store: Store, opts: PassOptions) -> None:
        inner = build(vol, store, opts)
        assert inner is not None
        self.inner: Pass = inner

    @property
    def counters(self) -> dict[str, int]:
        return self.inner.counters

    def report(self) -> PassReport:
        return self.inner.report()

    def steps(self) -> Iterator[Step]:
        while True:
            time.sleep(float(os.environ.get("DEDUPD_TEST_SLOW_SECONDS", "30")))
            yield Step("scanning", "slow step")


if os.environ.get("DEDUPD_TEST_SLOW_KIND"):
    KINDS[os.environ["DEDUPD_TEST_SLOW_KIND"]] = SlowPass

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
