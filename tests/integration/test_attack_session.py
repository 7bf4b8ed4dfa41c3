"""A real unprivileged user and racing writers against this session's new paths.

- Hardlink pass on a plain volume: the hasher now reads a size group side by side
  and the linker trusts that read (dedup/together.py `Proofs`) instead of reading
  the pair again. The user acts after the proof and after the batch's PENDING rows
  (window `batch`): rewrites its file (same size, mtime put back), swaps its
  directory for a symlink, or plants a file whose hash collides.
- Consolidation: a first import sorts a size group while reading it for the copies
  (consolidate/sortcopy.py) and, with prune_sources, removes the sources it
  confirmed. The user acts between that read and the rename into the archive
  (window `mutate`).

Outcomes are asserted on the disk: bytes, inode numbers, link counts, nothing
outside the volume touched, every content still somewhere.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dedupd import handles, testpoints
from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.dedup import hardlink, verify
from dedupd.dedup import together as together_mod
from dedupd.index.store import Store
from tests.fixtures.attacker import User, reachable
from tests.integration.test_attacker import (
    SIZE,
    Site,
    build,
    data,
    indexed_paths,
    manifest,
    refusals,
    run_pass,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["openat2", "by-component"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "by-component":
        monkeypatch.setattr(handles, "FORCE_FALLBACK", True)
    return str(request.param)


@pytest.fixture
def plain(loopfs: Callable[..., Path], tmp_path: Path, attacker: User) -> Site:
    """A plain volume on a real ext4, built as test_attacker builds it: the user's
    pair in share/atk/d (a1 kept, a2 duplicate), root's pair in share/root."""
    mnt = loopfs("ext4", "256M")
    vol = mnt / "vol"
    vol.mkdir()
    site = Site("plain", {"kind": "plain", "path": str(vol), "mode": "apply",
                          "settle_seconds": 0, "min_size": 1},
                (vol,), mnt / "out", tmp_path / "other-fs")
    build(site, attacker)
    return site


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every duplicate path the linker byte-compares itself (not proven by the hasher)."""
    seen: list[bytes] = []
    real = verify.compare_group

    def spy(keep: bytes, kid: Any, dups: list[tuple[bytes, Any]]) -> Any:
        seen.extend(p for p, _ in dups)
        return real(keep, kid, dups)

    monkeypatch.setattr(hardlink, "compare_group", spy)
    return seen


def at_batch(act: Callable[[], None]) -> Any:
    """Run act once, when the first batch's PENDING rows are committed."""
    fired: list[int] = []

    def hook(_point: str, _path: bytes) -> None:
        if not fired:
            fired.append(1)
            act()

    return testpoints.acting(("batch",), hook), fired


def ino(p: Path) -> tuple[int, int]:
    st = p.lstat()
    return st.st_ino, st.st_nlink


def mtime_arg(p: Path) -> str:
    ns = p.stat().st_mtime_ns
    return f"@{ns // 10**9}.{ns % 10**9:09d}"


@pytest.mark.parametrize("victim", ["a1", "a2"])  # the kept file, the duplicate
def test_proven_pair_rewritten_after_pending_is_refused(
        plain: Site, attacker: User, tmp_path: Path, compared: list[bytes],
        resolver: str, victim: str) -> None:
    """The hasher proved a1 == a2 by reading them side by side; after PENDING the
    owner rewrites one (same size, mtime put back). The proof must not be trusted:
    nothing of the pair is linked, the new bytes stay under their name."""
    d = plain.attacked / "share" / "atk" / "d"
    target = d / victim
    stamp = mtime_arg(target)
    new = b"Z" * SIZE
    script = 'head -c "$2" /dev/zero | tr "\\000" Z > "$1" && touch -m -d "$3" "$1"'
    ctx, fired = at_batch(lambda: attacker.run(script, str(target), str(SIZE), stamp))
    with ctx:
        rep = run_pass(plain, tmp_path / "db")
    assert fired
    assert bytes(d / "a2") not in compared, "the pair was compared again: no proof used"
    assert "changed" in refusals(rep), rep.problems
    assert target.read_bytes() == new
    other = d / ("a2" if victim == "a1" else "a1")
    assert other.read_bytes() == data(1)
    assert ino(d / "a1")[1] == ino(d / "a2")[1] == 1
    assert ino(d / "a1")[0] != ino(d / "a2")[0]
    root = plain.attacked / "share" / "root"  # the rest of the batch went through
    assert ino(root / "r1") == ino(root / "r2") and ino(root / "r1")[1] == 2


def test_directory_swapped_for_symlink_after_proof(plain: Site, attacker: User,
                                                   tmp_path: Path, compared: list[bytes],
                                                   resolver: str) -> None:
    """After the proof and PENDING, d becomes a symlink to root's private directory
    holding the same bytes under the same names (v1, v2 renamed a1, a2)."""
    private = plain.outside / "private"
    for a, v in (("a1", "v1"), ("a2", "v2")):
        os.rename(private / v, private / a)
    d = plain.attacked / "share" / "atk" / "d"
    before = plain.victims()
    ctx, fired = at_batch(lambda: attacker.run('mv "$1" "$1.real" && ln -s "$2" "$1"',
                                               str(d), str(private)))
    with ctx:
        rep = run_pass(plain, tmp_path / "db")
    assert fired
    assert bytes(d / "a2") not in compared
    assert plain.victims() == before
    assert "path_changed" in refusals(rep), rep.problems
    real = Path(str(d) + ".real")
    assert [ino(real / n)[1] for n in ("a1", "a2")] == [1, 1]
    assert (real / "a1").read_bytes() == (real / "a2").read_bytes() == data(1)
    roots = (bytes(plain.attacked) + b"/",)
    assert [p for p in indexed_paths(tmp_path / "db") if not p.startswith(roots)] == []


class _ConstHash:
    """An XXH3-128 stand-in under which every content collides."""

    def update(self, _data: object) -> None:
        pass

    def copy(self) -> _ConstHash:
        return _ConstHash()

    def digest(self) -> bytes:
        return b"\0" * 16


class _Colliding:
    xxh3_128 = _ConstHash

    @staticmethod
    def xxh3_64_intdigest(_data: object) -> int:
        return 0


def test_planted_collision_is_never_linked(plain: Site, attacker: User, tmp_path: Path,
                                           compared: list[bytes],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every member of the size group hashes alike (a crafted XXH3 collision): the
    user plants a0 (other bytes, first by path: the kept file) next to its pair
    and root's pair. Only byte-equal files are linked; root's files never get the
    user's inode; a0 keeps its bytes."""
    monkeypatch.setattr(together_mod, "xxhash", _Colliding)
    d = plain.attacked / "share" / "atk" / "d"
    planted = b"P" * SIZE
    attacker.run('head -c "$2" /dev/zero | tr "\\000" P > "$1"', str(d / "a0"), str(SIZE))
    assert (d / "a0").read_bytes() == planted
    root = plain.attacked / "share" / "root"
    rep = run_pass(plain, tmp_path / "db")
    assert (d / "a0").read_bytes() == planted and ino(d / "a0")[1] == 1
    assert (d / "a1").read_bytes() == (d / "a2").read_bytes() == data(1)
    assert (root / "r1").read_bytes() == (root / "r2").read_bytes() == data(2)
    users = {ino(d / n)[0] for n in ("a0", "a1", "a2")}
    assert not users & {ino(root / n)[0] for n in ("r1", "r2")}
    got = refusals(rep)
    assert got & {"content_differs", "owner_differs"}, rep.problems
    # a1/a2 (proven equal, other bytes than a0) and r1/r2 may be linked pairwise only
    assert ino(d / "a0")[0] not in {ino(d / n)[0] for n in ("a1", "a2")}


# ---- consolidation: a first import, sorted while copied, sources pruned ----------


@pytest.fixture
def share(loopfs: Callable[..., Path], attacker: User) -> Iterator[dict[str, Path]]:
    """ext4: share/atk/d (the user's, two equal files and one other of one size: an
    unsorted size group), archive/, a private root directory holding the same names
    with the same bytes, quarantine/."""
    mnt = loopfs("ext4", "256M")
    paths = {k: mnt / k for k in ("share", "archive", "private", "quarantine")}
    d = paths["share"] / "atk" / "d"
    d.mkdir(parents=True)
    paths["archive"].mkdir()
    paths["private"].mkdir(mode=0o700)
    for n, seed in (("mine.bin", 3), ("also.bin", 3), ("other.bin", 4)):
        (d / n).write_bytes(data(seed))
        (paths["private"] / n).write_bytes(data(seed))
        attacker.owns(d / n)
    attacker.owns(paths["share"] / "atk", d)
    reachable(d)
    paths["d"] = d
    yield paths


def archive_digests(archive: Path) -> list[bytes]:
    return sorted(hashlib.sha256(p.read_bytes()).digest() for p in archive.rglob("*")
                  if p.is_file() and not p.name.startswith(".dedupd"))


def run_import(paths: dict[str, Path], db: Path, act: Callable[[bytes], None]
               ) -> dict[str, Any]:
    cfg = ConsolidateConfig("c", (paths["share"],), paths["archive"], layout="{name}",
                            prune_sources=True, quarantine_dir=paths["quarantine"])
    store = Store(f"sqlite:///{db}")
    try:
        with testpoints.acting(("mutate",), lambda _p, path: act(path)):
            return consolidate(store, cfg, Options()).as_json()
    finally:
        store.close()


def at_step(share: dict[str, Path], step: str, path: bytes) -> bool:
    """stage: a copy's temp file is about to be made (the group read up to its first
    content); place: a staged copy is about to get its archive name (the whole
    group read and compared in memory)."""
    arch = bytes(share["archive"])
    return path == arch if step == "stage" else path.startswith(arch + b"/")


@pytest.mark.parametrize("step", ["stage", "place"])
def test_import_with_prune_directory_swapped_before_rename(
        share: dict[str, Path], attacker: User, tmp_path: Path, resolver: str,
        step: str) -> None:
    """Between the group's read and the first copy's rename, d becomes a symlink to
    root's private directory with the same names and bytes: prune must never remove
    (nor quarantine) root's files, the user's real files keep every content."""
    d, private = share["d"], share["private"]
    before = manifest(private)
    fired: list[bytes] = []

    def swap(path: bytes) -> None:
        if not fired and at_step(share, step, path):
            fired.append(path)
            attacker.run('mv "$1" "$1.real" && ln -s "$2" "$1"', str(d), str(private))

    rep = run_import(share, tmp_path / "db", swap)
    assert fired
    assert manifest(private) == before
    real = Path(str(d) + ".real")
    left = {n: (real / n).read_bytes() for n in ("mine.bin", "also.bin", "other.bin")
            if (real / n).exists()}
    archived = archive_digests(share["archive"])
    for n, seed in (("mine.bin", 3), ("also.bin", 3), ("other.bin", 4)):
        assert n in left or hashlib.sha256(data(seed)).digest() in archived, (n, rep)
    assert all(v == data(3 if n != "other.bin" else 4) for n, v in left.items())
    assert [p for p in indexed_paths(tmp_path / "db") if p.startswith(bytes(private))] == []


@pytest.mark.parametrize("step", ["stage", "place"])
@pytest.mark.parametrize("victim", ["also.bin", "mine.bin"])  # the copied one, its duplicate
def test_import_with_prune_source_rewritten_before_rename(
        share: dict[str, Path], attacker: User, tmp_path: Path, victim: str,
        step: str) -> None:
    """The owner rewrites a member of the sorted group (same size, mtime put back)
    after it was read and compared in memory, before the copy is renamed into the
    archive. Its new bytes must survive (at the source or in the archive); prune
    must not remove it on the strength of the earlier read."""
    d = share["d"]
    target = d / victim
    stamp = mtime_arg(target)
    fired: list[bytes] = []

    def rewrite(path: bytes) -> None:
        if not fired and at_step(share, step, path):
            fired.append(path)
            attacker.run('head -c "$2" /dev/zero | tr "\\000" Z > "$1" && '
                         'touch -m -d "$3" "$1"', str(target), str(SIZE), stamp)

    rep = run_import(share, tmp_path / "db", rewrite)
    assert fired
    new = hashlib.sha256(b"Z" * SIZE).digest()
    archived = archive_digests(share["archive"])
    assert (target.exists() and target.read_bytes() == b"Z" * SIZE) or new in archived, rep
    for n, seed in (("mine.bin", 3), ("also.bin", 3), ("other.bin", 4)):
        if n != victim:
            p = d / n
            assert (p.exists() and p.read_bytes() == data(seed)) or \
                hashlib.sha256(data(seed)).digest() in archived, (n, rep)
    # whatever the archive holds under a real name is a whole content of the share
    assert set(archived) <= {hashlib.sha256(x).digest()
                             for x in (data(3), data(4), b"Z" * SIZE)}
