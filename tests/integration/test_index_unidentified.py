"""Bad input of issue #13: a filesystem whose identity cannot be determined.

The real command on real mounts: a chroot whose root directory is not a mount
point (the filesystem holding it is in no line of the process's mountinfo), and
two loop filesystems with one UUID (a copied image). Each: one clear line, exit 1,
and the index exactly as it was (no scan row, no forgotten name, no new row).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from dedupd.errors import EXIT_FAILURE
from tests.fixtures.components import require_tools

DEDUPD = str(Path(sys.prefix) / "bin" / "dedupd")
REPO = Path(__file__).resolve().parents[2]
TABLES = ("hosts", "filesystems", "scans", "directories", "entries", "inodes", "meta")


def _dump(db: Path) -> dict[str, list[tuple[object, ...]]]:
    with sqlite3.connect(db) as c:
        return {t: sorted(c.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
                for t in TABLES}


# Runs in a private mount namespace (everything it mounts goes with it): a tmpfs
# holds the jail's root directory one level down, so that filesystem's mount point
# is outside the chroot; the directories dedupd needs ($DIRS: /usr, /etc, the
# Python installation, this checkout and its venv wherever they are), the index's
# directory (/db) and a tmpfs with an identifiable tree (/ok, a mount point inside
# the jail) are mounted into it.
JAIL = r"""
set -eu
fs="$1"; db="$2"; shift 2
mount -t tmpfs jailfs "$fs"
j="$fs/root"
mkdir -p "$j/data/t" "$j/ok" "$j/db" "$j/proc" "$j/dev"
for d in /*; do  # the top-level symlinks (/bin -> usr/bin ...)
    [ -L "$d" ] && ln -s "$(readlink "$d")" "$j/${d#/}"
done
IFS=: read -r -a dirs <<< "$DIRS"
for d in "${dirs[@]}"; do  # one filesystem each: no other mount comes along
    mkdir -p "$j$d"; mount --bind "$d" "$j$d"
done
mount -t proc proc "$j/proc"
mount --rbind /dev "$j/dev"
mount --bind "$db" "$j/db"
mount -t tmpfs oktmp "$j/ok"
mkdir "$j/ok/t"
echo same > "$j/data/t/a"; echo same > "$j/data/t/b"
echo same > "$j/ok/t/a"; echo same > "$j/ok/t/b"
for args in "$@"; do
    # shellcheck disable=SC2086
    chroot "$j" $args && echo "rc=0" || echo "rc=$?"
    cp "$db/i.db" "$db/snap.db"
    [ -e "$db/i.db-wal" ] && cp "$db/i.db-wal" "$db/snap.db-wal" || true
    mkdir -p "$db/snaps"; n=$(ls "$db/snaps" | wc -l)
    cp "$db/snap.db" "$db/snaps/$n.db"
    [ -e "$db/snap.db-wal" ] && cp "$db/snap.db-wal" "$db/snaps/$n.db-wal" || true
done
"""


def test_a_chroot_whose_root_filesystem_is_not_in_mountinfo(tmp_path: Path) -> None:
    require_tools("unshare", "chroot")
    (tmp_path / "fs").mkdir()
    (tmp_path / "db").mkdir()
    scan = f"{DEDUPD} scan --json --db sqlite:////db/i.db"
    need = ["/usr", "/etc", *{os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                                            REPO)}]
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", JAIL, "jail",
         str(tmp_path / "fs"), str(tmp_path / "db"),
         f"{scan} /ok/t", f"{scan} /ok/t /data/t", f"{scan} /data/t"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, DIRS=":".join(need)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("rc=") == 3, r.stdout
    rcs = [line for line in r.stdout.splitlines() if line.startswith("rc=")]
    assert rcs == ["rc=0", f"rc={EXIT_FAILURE}", f"rc={EXIT_FAILURE}"], r.stdout
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in r.stderr, r.stderr
    for line in errors:
        assert line.startswith("dedupd: error: cannot identify the filesystem of /data/t: ")
        assert "not in /proc/self/mountinfo" in line and "chroot" in line
    snaps = tmp_path / "db" / "snaps"
    first, second, third = (_dump(snaps / f"{n}.db") for n in range(3))
    assert len(first["entries"]) == 2 and len(first["scans"]) == 1
    assert second == first and third == first


def test_two_filesystems_with_one_uuid_are_refused_by_the_scan(tmp_path: Path) -> None:
    require_tools("mkfs.ext4")
    img = tmp_path / "a.img"
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
    clone = tmp_path / "b.img"
    subprocess.run(["cp", "--reflink=never", str(img), str(clone)], check=True)
    a, b = tmp_path / "a", tmp_path / "b"
    mounted: list[Path] = []
    try:
        for image, mnt in ((img, a), (clone, b)):
            mnt.mkdir()
            subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
            mounted.append(mnt)
            (mnt / "t").mkdir()
            for n in ("x", "y"):
                (mnt / "t" / n).write_bytes(b"same")
        db = tmp_path / "i.db"
        url = f"sqlite:///{db}"
        ok = subprocess.run([DEDUPD, "scan", "--json", "--db", url, str(a / "t")],
                            capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        before = _dump(db)
        for roots in ([a / "t", b / "t"], [b / "t", a / "t"]):
            r = subprocess.run([DEDUPD, "scan", "--db", url, *map(str, roots)],
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == EXIT_FAILURE
            assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
            assert "two filesystems with one identity" in r.stderr
            assert "tune2fs -U random" in r.stderr
            assert _dump(db) == before
    finally:
        for mnt in reversed(mounted):
            subprocess.run(["umount", str(mnt)], check=False)
    assert not any(os.path.ismount(m) for m in (a, b))
