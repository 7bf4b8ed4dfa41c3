"""A first import whose sources vanish or change after the plan, before they are read
for their copies: the run says so, with `files_copied < to_copy`, which makes
`dedupd consolidate` exit 1 ("some planned copies did not happen; re-run").

Since contents are named as their sources are read (002c06e, plan.unnamed), a
content whose source could not be read was never named, never counted in
to_copy, and the run exited 0 with two files of the shares not imported (the
problems listed them, the status said all was done).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.index.store import Store

pytestmark = pytest.mark.integration


def test_sources_gone_or_changed_before_their_copy_make_the_run_incomplete(
        tmp_path: Path) -> None:
    src, arch = tmp_path / "s", tmp_path / "arch"
    (src / "a").mkdir(parents=True)
    arch.mkdir()
    for i, name in enumerate(["keep1", "gone", "keep2", "changes"]):  # lone sizes
        (src / "a" / f"{name}.bin").write_bytes(os.urandom(5000 + i))
    fired: list[int] = []

    def on_copy(files: int, total: int, nbytes: int, btotal: int) -> None:
        if not fired:  # the copy stage starts: the plan is made
            fired.append(files)
            os.unlink(src / "a" / "gone.bin")
            with open(src / "a" / "changes.bin", "ab") as f:
                f.write(b"more")

    cfg = ConsolidateConfig("v", (str(src),), str(arch))
    store = Store(f"sqlite:///{tmp_path / 'db'}")
    try:
        rep = consolidate(store, cfg, Options(False, None, on_copy))
        assert fired
        assert sorted((os.path.basename(p["path"]), p["reason"]) for p in rep.problems) == [
            ("changes.bin", "changed"), ("gone.bin", "vanished")]
        assert rep.stats["files_copied"] == 2
        assert rep.stats["to_copy"] == 4  # what the plan had to copy: 2 did not happen
        again = consolidate(store, cfg, Options())  # the re-run imports the changed file
        assert [os.path.basename(c["archive"]) for c in again.copies] == ["changes.bin"]
        assert again.stats["files_copied"] == again.stats["to_copy"] == 1
    finally:
        store.close()
