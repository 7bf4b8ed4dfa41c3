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

import functools
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dedupd import handles, testpoints
from dedupd.config import ConsolidateConfig
from dedupd.consolidate.run import Options, consolidate
from dedupd.dedup import link_exec, verify
from dedupd.dedup import together as together_mod
from dedupd.index.store import Store
from tests.fixtures.attacker import User, reachable
from tests.fixtures.consolidate import Once
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

    monkeypatch.setattr(link_exec, "compare_group", spy)
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
    fired = Once(tmp_path / "fired")  # the act may run in the copy worker

    def swap(path: bytes) -> None:
        if at_step(share, step, path) and fired.first():
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
    fired = Once(tmp_path / "fired")  # the act may run in the copy worker

    def rewrite(path: bytes) -> None:
        if at_step(share, step, path) and fired.first():
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


# ---- root's files in a directory the user may write: names swapped at every point --


POINTS = ("walk.subdir", "read.open", "batch", "verify", "mutate")


def root_files_in_user_dirs(vol: Path, atk: User) -> tuple[Path, Path]:
    """share/atk/d and share/atk/e, the user's directories, holding root's files of
    one size: d/a == d/b == e/a (X), e/b (Y, other bytes). Root's duplicates get
    linked; the user can rename them (it owns the directories, no sticky bit)."""
    for child in vol.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    atk_dir = vol / "share" / "atk"
    d, e = atk_dir / "d", atk_dir / "e"
    for x in (d, e):
        x.mkdir(parents=True)
    (d / "a").write_bytes(data(1))
    (d / "b").write_bytes(data(1))
    (e / "a").write_bytes(data(1))
    (e / "b").write_bytes(data(5))
    atk.owns(atk_dir, d, e)
    reachable(d)
    return d, e


def assert_roots_one_content_per_inode(*roots: Path) -> None:
    """Every file under roots is root's, and the names of one inode read alike."""
    by_ino: dict[tuple[int, int], bytes] = {}
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file():
                st = p.lstat()
                assert st.st_uid == 0, p
                got = by_ino.setdefault((st.st_dev, st.st_ino), p.read_bytes())
                assert got == p.read_bytes(), p


def contents_under(root: Path) -> list[bytes]:
    return sorted(hashlib.sha256(p.read_bytes()).digest() for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink())


def pass_acting_at(site: Site, db: Path, k: int, act: Callable[[], None]
                   ) -> tuple[bool, list[tuple[str, bytes]], Any]:
    """A pass during which act() runs at the k-th test point reached: (whether it
    ran, the points seen, the report)."""
    seen: list[tuple[str, bytes]] = []

    def hook(point: str, path: bytes) -> None:
        seen.append((point, path))
        if len(seen) == k:
            act()

    with testpoints.acting(POINTS, hook):
        rep = run_pass(site, db)
    return len(seen) >= k, seen, rep


def plain_site(loopfs: Callable[..., Path], tmp_path: Path) -> tuple[Site, Path]:
    mnt = loopfs("ext4", "256M")
    vol = mnt / "vol"
    vol.mkdir()
    return Site("plain", {"kind": "plain", "path": str(vol), "mode": "apply",
                          "settle_seconds": 0, "min_size": 1},
                (vol,), mnt / "out", tmp_path / "unused"), vol


def pool_site(pool: Any, tmp_path: Path, **extra: str) -> Site:
    """A pool volume over the mergerfs pool's branches, applying at once."""
    vol: dict[str, Any] = {"kind": "pool", "path": str(pool.root),
                           "pool_root": str(pool.root),
                           "branches": [str(b) for b in pool.branches],
                           "mode": "apply", "settle_seconds": 0, "min_size": 1, **extra}
    return Site("pool", vol, tuple(pool.branches), tmp_path / "unused", tmp_path / "unused")


def empty_branches(pool: Any) -> None:
    for b in pool.branches:
        for child in b.iterdir():
            shutil.rmtree(child)


SWAPS = {
    # two root files trade names inside the user's directory
    "files": ('mv "$1/b" "$1/t" && mv "$2/b" "$1/b" && mv "$1/t" "$2/b"', ("d", "e")),
    # the user's two directories trade places
    "dirs": ('mv "$1" "$1.t" && mv "$2" "$1" && mv "$1.t" "$2"', ("d", "e")),
}


@pytest.mark.parametrize("swap", list(SWAPS))
def test_names_swapped_at_every_point_lose_nothing(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path, resolver: str,
        swap: str) -> None:
    """For k = 1, 2, ... the user swaps names right at the k-th test point the pass
    reaches, until a pass ends before its k-th point. Every time: each of root's
    contents is still under some name with its bytes, root still owns every file,
    only equal bytes share an inode."""
    site, vol = plain_site(loopfs, tmp_path)
    script, args = SWAPS[swap]
    k = 0
    while True:
        k += 1
        d, e = root_files_in_user_dirs(vol, attacker)
        want = contents_under(vol)
        paths = tuple(str(d.parent / a) for a in args)
        fired, seen, rep = pass_acting_at(site, tmp_path / f"db{k}", k,
                                          functools.partial(attacker.run, script, *paths))
        if not fired:  # not attacked: root's three equal files became one inode
            assert len({(x / "a").stat().st_ino for x in (d, e)} |
                       {(d / "b").stat().st_ino}) == 1, rep.problems
            break
        assert contents_under(vol) == want, (k, seen[k - 1], rep.problems)
        assert_roots_one_content_per_inode(vol)
    assert k > 10, k  # the pass went through many points


@pytest.mark.parametrize("mode", ["exchange"])
def test_atomic_save_at_every_point_is_kept(
        loopfs: Callable[..., Path], attacker: User, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """An editor saves d/b the atomic way (write a new file, rename it over the name)
    right at the k-th test point of the pass, for every k: the saved bytes are under
    d/b afterwards (the linker may not replace a name it did not verify; after an
    exchange the old name's inode is checked and swapped back)."""
    if mode != "exchange":  # the held swap: "rename" without renameat2, or "noreplace"
        monkeypatch.setenv("DEDUPD_TEST_NO_EXCHANGE", "1" if mode == "rename" else mode)
    site, vol = plain_site(loopfs, tmp_path)
    saved = b"S" * SIZE
    k = 0
    while True:
        k += 1
        d, _e = root_files_in_user_dirs(vol, attacker)
        new, b = d / ".b.new", d / "b"

        def save(new: Path = new, b: Path = b) -> None:
            new.write_bytes(saved)
            os.rename(new, b)

        fired, seen, rep = pass_acting_at(site, tmp_path / f"db{k}", k, save)
        if not fired:
            break
        assert b.read_bytes() == saved, (k, seen[k - 1], rep.problems)
    assert k > 10, k


@pytest.mark.parametrize("quarantine", [False, True])
def test_pool_save_at_every_point_is_kept(
        mergerfs_pool: Callable[..., Any], tmp_path: Path, quarantine: bool) -> None:
    """A pool: b0/a/x.bin is kept, b1/b/x.bin moves to b0 (link on b0, then the copy
    on b1 removed). At the k-th test point of the pass, for every k, the user saves
    b/x.bin on b1 the atomic way. Afterwards the saved bytes are still on b1 unless
    the pass removed b1's name before the save (then the save made a new one there)."""
    pool = mergerfs_pool(2)
    b0, b1 = pool.branches
    site = pool_site(pool, tmp_path,
                     **({"quarantine_dir": str(pool.root / ".q")} if quarantine else {}))
    saved = b"S" * SIZE
    k = 0
    while True:
        k += 1
        empty_branches(pool)
        (b0 / "a").mkdir()
        (b1 / "b").mkdir()
        (b0 / "a" / "x.bin").write_bytes(data(1))
        (b1 / "b" / "x.bin").write_bytes(data(1))
        target = b1 / "b" / "x.bin"

        def save(target: Path = target) -> None:
            new = target.parent / ".x.new"
            new.write_bytes(saved)
            os.rename(new, target)

        fired, seen, rep = pass_acting_at(site, tmp_path / f"db{k}", k, save)
        if not fired:  # not attacked: moved to b0 as a link of the kept file
            assert not target.exists() and (b0 / "b" / "x.bin").stat().st_ino == \
                (b0 / "a" / "x.bin").stat().st_ino, rep.problems
            break
        assert target.read_bytes() == saved, (k, seen[k - 1], rep.problems)
        assert (b0 / "a" / "x.bin").read_bytes() == data(1)
        moved = b0 / "b" / "x.bin"
        assert not moved.exists() or moved.read_bytes() == data(1)
    assert k > 5, k
