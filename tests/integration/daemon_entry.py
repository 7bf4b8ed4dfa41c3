"""Test-only entry point: `python daemon_entry.py ARGS...` == `dedupd ARGS...`.

Until the real 'plain' volume kind landed (issue 4, dedupd/volumes/plain.py),
this registered the foundation's report-only ScanPass for kind "plain"; with
the plain kind present it changes nothing for it. With
DEDUPD_TEST_SLOW_KIND=KIND set, volumes of KIND get a pass whose every step
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
from dedupd.volumes import KINDS, Step, _load_kinds
from dedupd.volumes._base import ScanPass

_load_kinds()
if "plain" not in KINDS:
    KINDS["plain"] = ScanPass


class SlowPass(ScanPass):
    def steps(self) -> Iterator[Step]:
        while True:
            time.sleep(float(os.environ.get("DEDUPD_TEST_SLOW_SECONDS", "30")))
            yield Step("scanning", "slow step")


if os.environ.get("DEDUPD_TEST_SLOW_KIND"):
    KINDS[os.environ["DEDUPD_TEST_SLOW_KIND"]] = SlowPass

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
