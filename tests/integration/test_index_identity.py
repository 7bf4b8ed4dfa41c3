"""Schema 3: files keyed by filesystem identity, not st_dev (issue #13).

Real remounts (loop devices), a real index written by the previous release
(schema 2, commit OLD_RELEASE, run from `git archive`), and two hosts sharing one
database: the rescan reads 0 bytes and reports the same groups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd.errors import EXIT_CONFIG
from dedupd.files.fsid import HostIdentity
from dedupd.index.db import SCHEMA_VERSION
from dedupd.index.fsmap import PROVISIONAL, HostClash
from dedupd.index.store import Store
from dedupd.scan.scanner import ScanOptions, scan
from tests.fixtures.loopfs import loopfs, remount_elsewhere, unmount  # noqa: F401
from tests.oracles import scan_json

OLD_RELEASE = "c9aacac"  # the last dedupd with schema 2
SCHEMA3_RELEASE = "5fecbba"  # the last dedupd with schema 3 (heads of small files kept)
REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> None:
    """Duplicates in nested directories, a unique file per size and a hardlink."""
    for k in range(6):
        d = root / f"d{k}" / "inner"
        d.mkdir(parents=True)
        (d / "same.bin").write_bytes(b"same" * 5000)
        (d / f"own{k}.bin").write_bytes(bytes([k]) * (7000 + k))
        (root / f"d{k}" / "pair.bin").write_bytes(b"p%d" % (k % 2) * 3000)
    os.link(root / "d0" / "inner" / "same.bin", root / "d0" / "linked.bin")


def _groups(doc: dict[str, object]) -> list[list[str]]:
    return sorted(sorted(g["paths"]) for g in doc["groups"])  # type: ignore[attr-defined]


def _old_dedupd(tmp: Path, release: str = OLD_RELEASE) -> Path:
    """A previous release's package, unpacked from git (no install needed)."""
    dest = tmp / "old"
    dest.mkdir()
    arch = subprocess.run(["git", "-C", str(REPO), "archive", release, "dedupd"],
                          check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest


def _old_scan(old: Path, db: str, *roots: Path) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=str(old))
    r = subprocess.run([sys.executable, "-m", "dedupd", "scan", "--json", "--db", db,
                        *map(str, roots)], capture_output=True, env=env, cwd=old,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _version(db: Path) -> str:
    import sqlite3

    with sqlite3.connect(db) as c:
        return str(c.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                   .fetchone()[0])


def test_an_index_of_the_previous_release_is_upgraded_and_nothing_is_read_again(
        tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    db = tmp_path / "i.db"
    url = f"sqlite:///{db}"
    before = _old_scan(_old_dedupd(tmp_path), url, root)
    assert _version(db) == "2" and before["stats"]["bytes_read"] > 0  # type: ignore[index]
    after = scan_json(root, db=url)
    assert _version(db) == str(SCHEMA_VERSION)
    assert after["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert after["stats"]["files_new"] == 0  # type: ignore[index]
    assert _groups(after) == _groups(before) and len(_groups(after)) == 3



def test_ext4_remounted_on_another_loop_device_is_not_read_again(
        tmp_path: Path, loopfs: Callable[[str, str], Path]) -> None:  # noqa: F811
    mnt = loopfs("ext4", "64M")
    _tree(mnt / "t")
    url = f"sqlite:///{tmp_path}/i.db"
    first = scan_json(mnt / "t", db=url)
    dev = os.stat(mnt / "t").st_dev
    remount_elsewhere(mnt.parent / "ext4.img", mnt)
    assert os.stat(mnt / "t").st_dev != dev
    again = scan_json(mnt / "t", db=url)
    assert again["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert again["stats"]["files_new"] == 0  # type: ignore[index]
    assert _groups(again) == _groups(first) and _groups(first)


def test_rows_of_an_unmounted_filesystem_survive_the_upgrade_and_are_claimed(
        tmp_path: Path, loopfs: Callable[[str, str], Path]) -> None:  # noqa: F811
    mnt = loopfs("ext4", "64M")
    _tree(mnt / "t")
    db = tmp_path / "i.db"
    url = f"sqlite:///{db}"
    before = _old_scan(_old_dedupd(tmp_path), url, mnt / "t")
    unmount(mnt)
    store = Store(url)  # the upgrade, while the filesystem is away
    idents = [r[0] for r in store.db.rows("SELECT ident FROM filesystems")]
    assert any(i.startswith(PROVISIONAL) for i in idents)
    assert store.counts()["hashed"] > 0
    store.close()
    remount_elsewhere(mnt.parent / "ext4.img", mnt)
    again = scan_json(mnt / "t", db=url)
    assert again["stats"]["bytes_read"] == 0  # type: ignore[index]
    assert _groups(again) == _groups(before)
    store = Store(url)
    idents = [r[0] for r in store.db.rows("SELECT ident FROM filesystems")]
    store.close()
    assert not any(i.startswith(PROVISIONAL) for i in idents)


def test_two_hosts_with_the_same_devices_never_touch_each_others_rows(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _tree(root)
    url = f"sqlite:///{tmp_path}/i.db"
    a = Store(url, HostIdentity("nas1", "m-a"))
    b = Store(url, HostIdentity("nas2", "m-b"))
    first_a = scan(a, [root], ScanOptions())
    first_b = scan(b, [root], ScanOptions())  # same dev and ino: b's own rows
    assert first_a.stats["bytes_read"] > 0 and first_b.stats["bytes_read"] > 0
    again_a = scan(a, [root], ScanOptions())
    assert again_a.stats["bytes_read"] == 0 and again_a.stats["files_forgotten"] == 0
    assert a.counts() == b.counts()
    b.forget([(f.dev, f.ino) for g in first_b.groups for f in g.files])
    assert scan(a, [root], ScanOptions()).stats["bytes_read"] == 0
    a.close()
    b.close()


def test_a_host_name_held_by_another_machine_is_refused_and_nothing_written(
        tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    Store(f"sqlite:///{db}", HostIdentity("nas1", "machine-a")).close()
    before = db.read_bytes()
    with pytest.raises(HostClash, match="machine-a") as e:
        Store(f"sqlite:///{db}", HostIdentity("nas1", "machine-b"))
    assert e.value.exit_code == EXIT_CONFIG
    assert db.read_bytes() == before


def test_cli_refuses_a_configured_host_name_of_another_machine(tmp_path: Path) -> None:
    db = tmp_path / "i.db"
    Store(f"sqlite:///{db}", HostIdentity("nas1", "another-machine")).close()
    before = db.read_bytes()
    cfg = tmp_path / "dedupd.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{db}"\nhost = "nas1"\n')
    (tmp_path / "t").mkdir()
    exe = REPO / ".venv" / "bin" / "dedupd"
    r = subprocess.run([str(exe), "scan", "-c", str(cfg), str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert r.stderr.count("\n") == 1 and "another-machine" in r.stderr
    assert "Traceback" not in r.stderr
    assert db.read_bytes() == before
