"""Test-only entry point: `python daemon_entry.py ARGS...` == `dedupd ARGS...`.

Until the real 'plain' volume kind lands (issue 4, dedupd/volumes/plain.py),
this registers the foundation's report-only ScanPass for kind "plain" so the
daemon tests can serve real plain directories. Once a plain kind exists in the
package, it wins and this module changes nothing. Production code has no hook
for this: the registration happens in this process before dedupd.cli.main().
"""

from __future__ import annotations

import sys

from dedupd.cli import main
from dedupd.volumes import KINDS, _load_kinds
from dedupd.volumes._base import ScanPass

_load_kinds()
if "plain" not in KINDS:
    KINDS["plain"] = ScanPass

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
