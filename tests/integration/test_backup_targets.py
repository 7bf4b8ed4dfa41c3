"""One conformance suite for every backup target: s3 (moto), rclone local, rclone s3."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from dedupd.backup.targets import Target, TargetError, confirmed, make_target
from dedupd.config import TargetConfig
from tests.fixtures.components import require_tools
from tests.fixtures.s3 import Moto

pytestmark = pytest.mark.integration
FAST = {"retries": 2, "retry_base_seconds": 0.01, "retry_max_seconds": 0.02,
        "timeout_seconds": 20.0}


@pytest.fixture(params=["s3", "rclone-local", "rclone-s3"])
def target(request: Any, moto: Moto, s3_bucket: str, tmp_path: Path) -> Target:
    if request.param == "s3":
        return make_target(TargetConfig(kind="s3", bucket=s3_bucket, prefix="p/",
                                        endpoint_url=moto.url, **FAST))  # type: ignore[arg-type]
    conf = request.getfixturevalue("rclone_conf")
    if request.param == "rclone-local":
        (tmp_path / "r").mkdir()
        return make_target(TargetConfig(kind="rclone", remote="loc", path=str(tmp_path / "r"),
                                        config=conf, **FAST))  # type: ignore[arg-type]
    return make_target(TargetConfig(kind="rclone", remote="mots3", path=f"{s3_bucket}/p",
                                    config=conf, **FAST))  # type: ignore[arg-type]


def _put(t: Target, key: str, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    md5 = hashlib.md5(data).hexdigest()
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        t.put(key, f, len(data), sha, md5, "STANDARD")
    return sha


def test_put_head_get_list_delete(target: Target) -> None:
    data = b"chunk data " * 1000
    sha = _put(target, "j/chunks/id1/000000.zst", data)
    _put(target, "j/chunks/id1/000001.zst", b"x")
    _put(target, "j/manifests/id1.json", b"{}")
    info = target.head("j/chunks/id1/000000.zst")
    assert info is not None and info.size == len(data) and info.readable
    assert confirmed(info, len(data), sha, hashlib.md5(data).hexdigest())
    assert target.head("j/chunks/id1/nope") is None
    out = io.BytesIO()
    target.get("j/chunks/id1/000000.zst", out)
    assert out.getvalue() == data
    keys = sorted(o.key for o in target.list("j/chunks/"))
    assert keys == ["j/chunks/id1/000000.zst", "j/chunks/id1/000001.zst"]
    assert [o.key for o in target.list("j/manifests/")] == ["j/manifests/id1.json"]
    target.delete("j/chunks/id1/000001.zst")
    target.delete("j/chunks/id1/000001.zst")  # idempotent
    assert [o.key for o in target.list("j/chunks/")] == ["j/chunks/id1/000000.zst"]
    assert target.list("nothing/here/") == []
    with pytest.raises(TargetError):
        target.get("j/chunks/id1/000001.zst", io.BytesIO())


def test_in_memory_body_and_overwrite(target: Target) -> None:
    body = io.BytesIO(b"manifest v1")
    target.put("j/m.json", body, 11, hashlib.sha256(b"manifest v1").hexdigest(), None,
               "STANDARD")
    _put(target, "j/m.json", b"manifest v2!")
    out = io.BytesIO()
    target.get("j/m.json", out)
    assert out.getvalue() == b"manifest v2!"


def test_delete_folder_takes_that_folder_only(target: Target) -> None:
    for i in range(3):
        _put(target, f"j/chunks/a/{i:06d}.zst", b"a%d" % i)
    _put(target, "j/chunks/ab/000000.zst", b"sibling with a longer name")
    _put(target, "j/manifests/a.json", b"{}")
    target.delete_folder("j/chunks/a/")
    target.delete_folder("j/chunks/a/")  # idempotent
    target.delete_folder("j/chunks/never/")
    left = sorted(o.key for o in target.list("j/"))
    assert left == ["j/chunks/ab/000000.zst", "j/manifests/a.json"]
    for bad in ("", "/", "j/chunks/ab/000000.zst"):
        with pytest.raises(TargetError, match="refusing"):
            target.delete_folder(bad)
    assert sorted(o.key for o in target.list("j/")) == left


def test_rclone_local_head_hashes_the_stored_bytes(rclone_conf: Path, tmp_path: Path) -> None:
    """On a `local` remote head() hashes the file itself: it must agree with what
    `rclone lsjson --hash` says, and see a flipped byte."""
    (tmp_path / "r").mkdir()
    t = make_target(TargetConfig(kind="rclone", remote="loc", path=str(tmp_path / "r"),
                                 config=rclone_conf, **FAST))  # type: ignore[arg-type]
    data = bytes(range(256)) * 5000
    sha = _put(t, "j/chunks/x/000000.zst", data)
    assert confirmed(t.head("j/chunks/x/000000.zst"), len(data), sha, None)
    stored = tmp_path / "r/j/chunks/x/000000.zst"
    flipped = bytearray(stored.read_bytes())
    flipped[4321] ^= 1
    stored.write_bytes(flipped)
    info = t.head("j/chunks/x/000000.zst")
    assert info is not None and info.size == len(data)
    assert not confirmed(info, len(data), sha, None)
    out = subprocess.run(["rclone", "--config", str(rclone_conf), "lsjson", "--hash-type",
                          "SHA-256", f"loc:{stored}"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out)[0]["Hashes"]["sha256"] == info.sha256
    assert t.head("j/chunks/x/000001.zst") is None
    assert t.head("j/chunks/x") is None  # a folder is no object


def test_rclone_local_backend_is_recognised_from_its_features(rclone_conf: Path,
                                                               s3_bucket: str,
                                                               tmp_path: Path) -> None:
    """The local backend (also behind an alias) is found from `backend features`
    alone; an s3 remote or a crypt over a local path is not taken for a directory."""
    from dedupd.backup.targets.rclone import RcloneTarget

    (tmp_path / "r").mkdir()
    obscured = subprocess.run(["rclone", "obscure", "pw"], capture_output=True, text=True,
                              check=True).stdout.strip()
    with rclone_conf.open("a") as f:
        f.write(f"\n[al]\ntype = alias\nremote = loc:{tmp_path}\n"
                f"\n[cr]\ntype = crypt\nremote = loc:{tmp_path}/c\npassword = {obscured}\n")

    def local_dir(remote: str, path: str) -> Path | None:
        t = RcloneTarget(TargetConfig(kind="rclone", remote=remote, path=path,
                                      config=rclone_conf, **FAST))  # type: ignore[arg-type]
        return t._local_dir()

    assert local_dir("loc", str(tmp_path / "r")) == tmp_path / "r"
    assert local_dir("al", "r") == tmp_path / "r"
    assert local_dir("cr", "r") is None
    assert local_dir("mots3", f"{s3_bucket}/p") is None


def test_rclone_local_live_upload_takes_a_shorter_body(rclone_conf: Path,
                                                       tmp_path: Path) -> None:
    """A local remote's live upload stores a shorter body than the size given as
    it is (the stream's last chunk goes up live), with no blocks preallocated
    beyond it."""
    from dedupd.backup.targets import begin_put

    root = tmp_path / "r"
    root.mkdir()
    t = make_target(TargetConfig(kind="rclone", remote="loc", path=str(root),
                                 config=rclone_conf, **FAST))  # type: ignore[arg-type]
    short = begin_put(t, "j/chunks/a/000002.zst", 64 << 20, "STANDARD")
    assert short is not None and short.takes_short
    short.write(memoryview(b"z" * 1000))
    assert short.finish()
    stored = root / "j/chunks/a/000002.zst"
    assert stored.read_bytes() == b"z" * 1000 and stored.stat().st_blocks * 512 < 1 << 20


def test_rclone_local_body_in_memory_written_in_place(rclone_conf: Path,
                                                      tmp_path: Path) -> None:
    """A manifest (a body in memory) on a local remote is written by dedupd under a
    temp name and renamed: the object's bytes, rclone's file mode (0600), no temp file
    left, an overwrite replaces it whole; `rclone cat` reads the same bytes."""
    root = tmp_path / "r"
    root.mkdir()
    t = make_target(TargetConfig(kind="rclone", remote="loc", path=str(root),
                                 config=rclone_conf, **FAST))  # type: ignore[arg-type]
    for body in (b'{"a": 1}' * 100, b"{}"):
        t.put("j/manifests/m.json", io.BytesIO(body), len(body),
              hashlib.sha256(body).hexdigest(), None, "STANDARD")
        stored = root / "j/manifests/m.json"
        assert stored.read_bytes() == body and (stored.stat().st_mode & 0o777) == 0o600
        assert [x.name for x in stored.parent.iterdir()] == ["m.json"]
        out = subprocess.run(["rclone", "--config", str(rclone_conf), "cat", f"loc:{stored}"],
                             capture_output=True, check=True).stdout
        assert out == body
    with pytest.raises(TargetError, match="declared"):
        t.put("j/manifests/n.json", io.BytesIO(b"{}"), 3, "0" * 64, None, "STANDARD")
    assert not (root / "j/manifests/n.json").exists()


def test_rclone_local_backup_is_on_disk_once_its_manifest_is_put(
        rclone_conf: Path, loopfs: Any) -> None:
    """A local remote's chunk (written by a real `rclone rcat`) and the manifest put
    after it survive a crash right after the put: XFS shut down without flushing
    its log (as a power cut leaves it), then mounted again. rclone syncs nothing,
    so without the manifest put's syncfs both would still be only in memory when
    the run goes on to prune older backups."""
    require_tools("xfs_io")
    mnt = loopfs("xfs", "300M")
    root = mnt / "r"
    root.mkdir()
    t = make_target(TargetConfig(kind="rclone", remote="loc", path=str(root),
                                 config=rclone_conf, **FAST))  # type: ignore[arg-type]
    chunk = os.urandom(3 * 1024 * 1024)
    subprocess.run(["rclone", "--config", str(rclone_conf), "rcat", f"loc:{root}/j/chunks/c0"],
                   input=chunk, check=True)
    manifest = b'{"chunks": ["c0"]}'
    t.put("j/manifests/m.json", io.BytesIO(manifest), len(manifest),
          hashlib.sha256(manifest).hexdigest(), None, "STANDARD")
    subprocess.run(["xfs_io", "-x", "-c", "shutdown", str(mnt)], check=True)
    img = mnt.parent / "xfs.img"
    subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    assert (root / "j/chunks/c0").read_bytes() == chunk
    assert (root / "j/manifests/m.json").read_bytes() == manifest


def test_rclone_local_delete_and_purge_without_rclone(rclone_conf: Path,
                                                      tmp_path: Path) -> None:
    """A local remote's objects and folders are deleted in place: a missing one is
    no error, a folder's symlink is removed and never followed."""
    root = tmp_path / "r"
    root.mkdir()
    t = make_target(TargetConfig(kind="rclone", remote="loc", path=str(root),
                                 config=rclone_conf, **FAST))  # type: ignore[arg-type]
    _put(t, "j/chunks/a/000000.zst", b"x" * 10)
    _put(t, "j/manifests/a.json", b"{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    (root / "j/chunks/a/link").symlink_to(outside)
    t.delete("j/manifests/a.json")
    t.delete("j/manifests/a.json")
    assert not (root / "j/manifests/a.json").exists()
    t.delete_folder("j/chunks/a/")
    t.delete_folder("j/chunks/a/")
    assert not (root / "j/chunks/a").exists() and (outside / "keep").read_bytes() == b"k"
    assert (root / "j/chunks").is_dir()


def test_rclone_local_list_and_get_agree_with_rclone(rclone_conf: Path,
                                                     tmp_path: Path) -> None:
    """A local remote is listed and read without rclone: same keys and sizes as
    `rclone lsjson -R --files-only` (symlinks skipped, as rclone does), same bytes."""
    root = tmp_path / "r"
    root.mkdir()
    t = make_target(TargetConfig(kind="rclone", remote="loc", path=str(root),
                                 config=rclone_conf, **FAST))  # type: ignore[arg-type]
    _put(t, "j/chunks/a/000000.zst", b"x" * 1000)
    _put(t, "j/chunks/a/000001.zst", b"y" * 10)
    _put(t, "j/manifests/a.json", b"{}")
    _put(t, "j2/manifests/b.json", b"{}")
    (root / "j/chunks/a/link.zst").symlink_to(root / "j/manifests/a.json")
    for prefix in ("j/", "j/chunks/", "j/manifests/", "j/chunks/a/0000", "nope/"):
        folder = prefix.rpartition("/")[0]
        r = subprocess.run(["rclone", "--config", str(rclone_conf), "lsjson", "-R",
                            "--files-only", f"loc:{root}/{folder}"], capture_output=True,
                           text=True)
        assert r.returncode in (0, 3), r.stderr  # 3: no such directory
        listed = json.loads(r.stdout) if r.returncode == 0 else []
        theirs = sorted((f"{folder}/{o['Path']}", o["Size"]) for o in listed
                        if f"{folder}/{o['Path']}".startswith(prefix))
        assert sorted((o.key, o.size) for o in t.list(prefix)) == theirs, prefix
    out = io.BytesIO()
    t.get("j/chunks/a/000000.zst", out)
    assert out.getvalue() == b"x" * 1000
    with pytest.raises(TargetError, match="no such object"):
        t.get("j/chunks/a/000009.zst", io.BytesIO())
