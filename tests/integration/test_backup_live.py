"""Live uploads (live.py): chunks go to an rclone target as the stream is read.

The spooled copy is only the retry copy: a live upload cut mid-chunk is put
again from it without regenerating the stream, an endpoint that dies under a
live upload is survived the same way, and each chunk's bytes go up once when
nothing fails. Every restore is identical.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup import restore, run_job
from dedupd.backup.targets import make_target
from tests.fixtures.s3 import FaultProxy, Moto
from tests.integration.backup_util import (
    MiB,
    half_random_dataset,
    make_config,
    mountpoint,
    store_for,
    tree,
)

pytestmark = pytest.mark.integration


def _rclone_wrapper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut_key: str = ""
                    ) -> Path:
    """`rclone` on PATH that logs each rcat's destination and, when cut_key is given,
    makes the first rcat of that chunk read 300 KB and fail (a cut upload)."""
    real = subprocess.run(["sh", "-c", "command -v rclone"], capture_output=True, text=True,
                          check=True).stdout.strip()
    bindir, log = tmp_path / "bin", tmp_path / "rcat.log"
    bindir.mkdir()
    script = bindir / "rclone"
    script.write_text(f"""#!/bin/sh
for a; do last=$a; done
echo "$1 $last" >> {tmp_path}/verbs.log
if [ "$1" = rcat ]; then
  echo "$last" >> {log}
  case "$last" in
    *{cut_key or '/never/'}) if [ ! -e {tmp_path}/cut.done ]; then
        touch {tmp_path}/cut.done; head -c 300000 > /dev/null; exit 1; fi ;;
  esac
fi
exec {real} "$@"
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return log


def _rcats(log: Path) -> Counter[str]:
    return Counter(Path(x).name for x in log.read_text().split() if "/chunks/" in x)


def _backup_and_restore(cfg: Any, pool: Any, src: Path) -> Any:
    store = store_for(cfg)
    try:
        r = run_job(cfg, "j", store)
    finally:
        store.close()
    tgt = make_target(cfg.backups["j"].target)
    p = restore.plan(tgt, "j", None, pool.dataset("restored"))
    restore.run(tgt, p, verify_first=True, force=False, spool_dir=None, report=lambda m: None)
    assert tree(mountpoint(pool, "restored")) == tree(src)
    return r


def _local(tmp_path: Path, conf: Path) -> dict[str, Any]:
    return {"kind": "rclone", "remote": "loc", "path": str(tmp_path / "remote"),
            "config": str(conf)}


def test_full_chunks_go_up_live_once(tmp_path: Path, zpool: Any, rclone_conf: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pool = zpool("256M")
    src = half_random_dataset(pool, 51, 32)  # ~8 MiB stored: 8+ chunks of 1 MiB
    log = _rclone_wrapper(tmp_path, monkeypatch)
    r = _backup_and_restore(make_config(tmp_path, pool, _local(tmp_path, rclone_conf)),
                            pool, src)
    assert r.chunks >= 5 and r.uploaded == r.chunks and r.restarts == 0
    # a local remote takes the shorter last chunk live too (no size declared)
    assert r.streamed == r.chunks, "every chunk should go up live"
    rcats = _rcats(log)
    # the upload started ahead for a chunk that never came: killed, maybe logged
    assert rcats.pop(f"{r.chunks:06d}.zst", 0) in (0, 1)
    assert sorted(rcats) == [f"{i:06d}.zst" for i in range(r.chunks)]
    assert set(rcats.values()) == {1}, rcats
    _only_the_manifests_chunks(tmp_path / "remote", r.chunks)
    # no rclone process but the uploads: the empty object an upload started ahead
    # and killed may leave is deleted in place, the manifest is written in place
    verbs = Counter(x.split()[0] for x in (tmp_path / "verbs.log").read_text().splitlines())
    assert set(verbs) == {"backend", "rcat"}, verbs
    # the manifest is written in place on a local remote: every rcat is a chunk's
    assert not [x for x in log.read_text().split() if "/manifests/" in x]


def _only_the_manifests_chunks(remote: Path, chunks: int) -> None:
    """No stray object (an upload started ahead leaves an empty file on a local
    remote): the folder holds exactly the chunks of the manifest."""
    names = sorted(p.name for p in remote.rglob("chunks/*/*"))
    assert names == [f"{i:06d}.zst" for i in range(chunks)], names


def test_live_upload_cut_mid_chunk_is_put_from_the_spool(
        tmp_path: Path, zpool: Any, rclone_conf: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pool = zpool("256M")
    src = half_random_dataset(pool, 52, 32)
    log = _rclone_wrapper(tmp_path, monkeypatch, cut_key="000002.zst")
    r = _backup_and_restore(make_config(tmp_path, pool, _local(tmp_path, rclone_conf)),
                            pool, src)
    assert (tmp_path / "cut.done").exists()
    assert r.uploaded == r.chunks and r.restarts == 0, "the spooled copy was not used"
    assert r.streamed == r.chunks - 1
    rcats = _rcats(log)
    assert rcats.pop("000002.zst") == 2
    assert rcats.pop(f"{r.chunks:06d}.zst", 0) in (0, 1)
    assert set(rcats.values()) == {1}, "a chunk that went up was sent again"
    _only_the_manifests_chunks(tmp_path / "remote", r.chunks)


def test_endpoint_dies_under_a_live_upload(tmp_path: Path, zpool: Any, moto: Moto,
                                           s3_bucket: str, rclone_conf: Path,
                                           fault_proxy: FaultProxy) -> None:
    """rclone on S3 (single PUTs of a declared size): the connection is dropped in
    the middle of a live chunk; the chunk is put again from the spool."""
    pool = zpool("256M")
    src = half_random_dataset(pool, 53, 32)
    with rclone_conf.open("a") as f:
        f.write(f"\n[proxy]\ntype = s3\nprovider = Other\nenv_auth = false\n"
                f"access_key_id = testing\nsecret_access_key = testing\n"
                f"region = us-east-1\nendpoint = {fault_proxy.url}\n"
                "force_path_style = true\n")
    target = {"kind": "rclone", "remote": "proxy", "path": f"{s3_bucket}/p",
              "config": str(rclone_conf), "retry_base_seconds": 0.05}
    fault_proxy.cut_once_after(int(2.5 * MiB))  # inside the third chunk's PUT
    r = _backup_and_restore(make_config(tmp_path, pool, target), pool, src)
    assert fault_proxy.cuts == 1
    assert r.uploaded == r.chunks and r.restarts == 0
    assert r.chunks - 2 <= r.streamed < r.chunks
