"""Attacks and edge cases against the side-by-side reader's reused buffers and page
cache reads (dedup/together.py, hashing/engine.py), the batch's release thread
(fsops/release.py, dedup/link_exec.py) and a dry run's use of a proof
(dedup/hardlink.py _describe)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd.dedup import hardlink, together
from dedupd.dedup.hardlink import LinkPolicy, link_groups
from dedupd.dedup.journal import Journal
from dedupd.dedup.recovery import recover_all
from dedupd.dedup.together import BUF, MAX_FILES, POOL, Proofs, Together, read_together
from dedupd.files.events import Ident, Problem
from dedupd.fsops import release as release_mod
from dedupd.fsops.swap import Swap
from dedupd.hashing import Hasher, HashStats, Stability
from dedupd.hashing.read import HEAD_SIZE, Got, read_one
from dedupd.index.store import IndexedFile, Store
from dedupd.scan.scanner import DupGroup, ScanOptions, scan
from tests.fixtures.attacker import User, reachable
from tests.fixtures.procs import open_files
from tests.integration.linktree import blob, inodes, write

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def unhashed(store: Store, root: Path, *sizes: int) -> list[IndexedFile]:
    rep = scan(store, [str(root)], ScanOptions())
    files = [f for g in store.files_of_sizes(rep.scan_id, list(sizes)) for f in g]
    return sorted((f._replace(head=None, full=None) for f in files),
                  key=lambda f: (f.size, f.path))


def alike(root: Path, store: Store, names: str, data: bytes) -> list[IndexedFile]:
    """Files named after each letter of names, all holding data, as a pass that has not
    read them yet sees them."""
    for n in names:
        write(root / f"{n}.bin", data)
    return unhashed(store, root, len(data))


def name(f: IndexedFile) -> str:
    return os.path.basename(f.path).decode()


def poison(data: bytes) -> None:
    """Fill this thread's reused buffers (together._buffers) with `data`, repeated."""
    for b in together._buffers(POOL):
        b[:] = (data * (BUF // max(len(data), 1) + 1))[:BUF]


def equal_sets(files: list[IndexedFile], proofs: Proofs) -> set[frozenset[str]]:
    """The partition the proofs make of files (pairs proven equal, closed)."""
    out = set()
    for f in files:
        out.add(frozenset(name(g) for g in files if g is f or proofs.equal(f.ident, g.ident)))
    return {s for s in out if len(s) > 1}


def by_content(root: Path, files: list[IndexedFile]) -> set[frozenset[str]]:
    groups: dict[bytes, set[str]] = {}
    for f in files:
        groups.setdefault(Path(os.fsdecode(f.path)).read_bytes(), set()).add(name(f))
    return {frozenset(s) for s in groups.values() if len(s) > 1}


# --- together: stale bytes in reused buffers, sizes around BUF, groups past POOL/MAX ---

SIZES = [1, 2, HEAD_SIZE - 1, HEAD_SIZE, HEAD_SIZE + 1, BUF - 1, BUF, BUF + 1,
         2 * BUF + HEAD_SIZE + 3]


@pytest.mark.parametrize("members", [2, POOL + 3, MAX_FILES + 6])
def test_poisoned_buffers_never_decide(link_tree: tuple[Path, Store], members: int) -> None:
    """Members of one size read one after the other in one thread, the thread's buffers
    poisoned before each read with the bytes of the *other* kind of member (so a
    compare that looked past the n bytes read, or a chunk not filled, would find them
    equal): the proofs partition the files exactly by content and every outcome is
    what read_one gives."""
    root, store = link_tree
    for size in SIZES:
        base = blob(size, size)
        last = base[:-1] + bytes([base[-1] ^ 1])  # differs in the last byte only
        firstb = bytes([base[0] ^ 1]) + base[1:]
        for k in range(members):
            content = last if k % 5 == 3 else firstb if k % 7 == 6 else base
            write(root / str(size) / f"m{k:03}", content)
    files = unhashed(store, root, *SIZES)
    for size in SIZES:
        group = [f for f in files if f.size == size]
        base = blob(size, size)
        for poisoned in (base, base[:-1] + bytes([base[-1] ^ 1]), b"\0", b"\xff"):
            poison(poisoned)
            proofs = Proofs()
            got = Together(proofs)(group)
            content = by_content(root, group)
            assert all(any(e <= c for c in content) for e in equal_sets(group, proofs)), size
            for f, g in zip(group, got, strict=True):
                assert isinstance(g, Got), (size, name(f), g)
                want = read_one(f, g.full is not None)
                assert g == want if g.full is not None else g.head == want.head, \
                    (size, name(f))
            # every member of a proof is a real duplicate of its proof's others
            for f in group:
                for h in group:
                    if proofs.equal(f.ident, h.ident):
                        assert Path(os.fsdecode(f.path)).read_bytes() == \
                            Path(os.fsdecode(h.path)).read_bytes()
            if members <= MAX_FILES:  # one read: every equal set proven whole
                assert equal_sets(group, proofs) == content, size


@pytest.mark.parametrize("change", ["same size new bytes", "truncated", "grown",
                                    "truncated and regrown"])
def test_member_changed_during_the_read_is_never_proven(link_tree: tuple[Path, Store],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        change: str) -> None:
    """A member rewritten after its first chunk was read (its mtime put back by the
    user): it is a problem, in no proof; the others are still proven."""
    root, store = link_tree
    size = 3 * BUF + 77
    files = alike(root, store, "abc", blob(5, size))
    victim = root / "b.bin"
    st0 = victim.stat()
    real = together._fill
    calls: list[int] = []

    def fill(m: together._Member, off: int, n: int) -> None:
        real(m, off, n)
        if m.f.path.endswith(b"/b.bin") and off > 0 and not calls:
            calls.append(off)
            with open(victim, "r+b") as fh:
                if change == "same size new bytes":
                    fh.seek(size - 10)
                    fh.write(b"X" * 10)
                elif change == "truncated":
                    fh.truncate(off + 5)
                elif change == "grown":
                    fh.seek(0, 2)
                    fh.write(b"more")
                else:
                    fh.truncate(off)
                    fh.truncate(size)  # zeros where its bytes were
            os.utime(victim, ns=(st0.st_atime_ns, st0.st_mtime_ns))

    monkeypatch.setattr(together, "_fill", fill)
    proofs = Proofs()
    got = read_together(files, proofs)
    assert calls
    n = {name(f): (f, g) for f, g in zip(files, got, strict=True)}
    assert isinstance(n["b.bin"][1], Problem), n["b.bin"][1]
    assert proofs.equal(n["a.bin"][0].ident, n["c.bin"][0].ident)
    assert not proofs.equal(n["a.bin"][0].ident, n["b.bin"][0].ident)
    assert not proofs.equal(n["c.bin"][0].ident, n["b.bin"][0].ident)


def test_pool_threads_reading_at_once_keep_their_own_buffers(link_tree: tuple[Path, Store]
                                                             ) -> None:
    """Cold reads go to the pool: many size groups read side by side in several
    threads at once, each thread with its reused buffers. The groups found and the
    proofs are exactly those of the files' contents, the hashes read_one's."""
    root, store = link_tree
    sizes = [BUF + 1000 + k for k in range(24)]
    for s in sizes:
        for k in range(5):
            # two kinds per size, differing in their last byte only
            d = blob(s, s)
            write(root / str(s) / f"f{k}", d if k < 3 else d[:-1] + b"\x00")
    files = unhashed(store, root, *sizes)
    groups = [[f for f in files if f.size == s] for s in sizes]
    proofs = Proofs()
    reader = Together(proofs)
    reader.warm = False  # as after a miss: every set in the pool's threads
    seen: set[str] = set()

    class Recorded(Together):
        def __call__(self, members: list[IndexedFile]) -> list[Got | Problem]:
            seen.add(threading.current_thread().name)
            return reader(members)

    rec = Recorded(proofs)
    rec.warm = False
    res = list(Hasher(Stability(0.0), HashStats(), workers=8, together=rec).run(groups))
    found = sorted(sorted(name(f) + str(f.size) for f in g.files) for r in res for g in r.groups)
    want = sorted(sorted(f"f{k}{s}" for k in ks) for s in sizes for ks in ((0, 1, 2), (3, 4)))
    assert found == want
    assert len(seen) > 1 and threading.current_thread().name not in seen
    for g in groups:
        assert equal_sets(g, proofs) == by_content(root, g)
    for r in res:
        for g in r.groups:
            for f in g.files:
                assert g.full == read_one(f, True).full


# --- a dry run's proof ----------------------------------------------------------------

def test_a_dry_run_does_not_take_a_proof_of_a_file_rewritten_since(
        link_tree: tuple[Path, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair proven equal, then b rewritten with other bytes of the same size and its
    mtime put back: a dry run compares it again and refuses it (content_differs)."""
    root, store = link_tree
    size = 2 * BUF + 5
    files = alike(root, store, "ab", blob(3, size))
    proofs = Proofs()
    read_together(files, proofs)
    a, b = files
    assert proofs.equal(a.ident, b.ident)
    st = (root / "b.bin").stat()
    with open(root / "b.bin", "r+b") as fh:
        fh.write(b"!")
    os.utime(root / "b.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    read: list[bytes] = []
    real = hardlink.same_bytes

    def counting(x: bytes, x_id: Ident, y: bytes, y_id: Ident) -> bool:
        read.append(y)
        return real(x, x_id, y, y_id)

    monkeypatch.setattr(hardlink, "same_bytes", counting)
    b2 = b._replace(ctime_ns=(root / "b.bin").stat().st_ctime_ns)  # a new pass's index
    res = link_groups(None, [DupGroup(size, (a, b2))], LinkPolicy("v", (bytes(root),)),
                      dry_run=True, proofs=proofs)
    assert not res.actions and dict(res.counts) == {"content_differs": 1}
    assert len(read) == 1


# --- the release thread ---------------------------------------------------------------

def deleted_under(root: Path) -> list[str]:
    return [t for t in open_files(f"{root}/") if t.endswith(" (deleted)")]


def release_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "release" and t.is_alive()]


def pairs_tree(root: Path, n: int, size: int = 50_000) -> dict[str, bytes]:
    want = {}
    for k in range(n):
        for side in "ab":
            want[f"g{k}/{side}.bin"] = write(root / f"g{k}" / f"{side}.bin",
                                             blob(100 + k, size)).read_bytes()
    return want


def groups_of(store: Store, root: Path, size: int = 50_000) -> tuple[list[DupGroup], Proofs]:
    files = unhashed(store, root, size)
    proofs = Proofs()
    res = list(Hasher(Stability(0.0), HashStats(), together=Together(proofs)).run([files]))
    return [DupGroup(g.size, g.files) for r in res for g in r.groups], proofs


@pytest.mark.parametrize("where", ["exchange", "unlink_temp"])
def test_an_error_mid_batch_closes_every_held_inode_and_loses_nothing(
        link_tree: tuple[Path, Store], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """An unexpected error (not an OSError: it leaves the batch) at the 5th swap of a
    batch after 4 old copies were held: no release thread is left, no descriptor of
    an unlinked file, every name still has its bytes, and recovery settles the rest."""
    root, store = link_tree
    want = pairs_tree(root, 8)
    groups, proofs = groups_of(store, root)
    assert len(groups) == 8
    calls: list[int] = []
    real = getattr(Swap, where)

    def boom(self: Swap, *a: int) -> object:
        calls.append(1)
        if len(calls) == 5:
            if where == "unlink_temp":
                real(self, *a)  # the old copy held and unlinked, then the error
            raise RuntimeError("injected")
        return real(self, *a)

    monkeypatch.setattr(Swap, where, boom)
    before = threading.active_count()
    jr = Journal(store)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            link_groups(jr, groups, LinkPolicy("v", (bytes(root),)), proofs=proofs)
        assert release_threads() == []
        assert threading.active_count() <= before
        assert deleted_under(root) == []
        got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.bin")}
        assert got == want
        recover_all(jr, "v")
        assert jr.unfinished("v") == []
    finally:
        jr.close()
    got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert got == want  # and no .dedupd-* name left
    assert deleted_under(root) == []


def test_a_full_batch_holds_at_most_limit_descriptors(link_tree: tuple[Path, Store],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """More old copies than LIMIT in one batch, the release thread slowed down: the
    batch never holds more than LIMIT (+1 in the thread's hands) unlinked inodes, and
    none once link_groups returns."""
    root, store = link_tree
    n = release_mod.LIMIT + 30
    want = pairs_tree(root, n, 5000)
    groups, proofs = groups_of(store, root, 5000)
    real_close = os.close
    gate = threading.Event()
    peak: list[int] = [0]

    def slow_close(fd: int) -> None:
        if threading.current_thread().name == "release":
            peak[0] = max(peak[0], len(deleted_under(root)))
            gate.wait(0.002)
        real_close(fd)

    monkeypatch.setattr(release_mod.os, "close", slow_close)
    jr = Journal(store)
    try:
        res = link_groups(jr, groups, LinkPolicy("v", (bytes(root),)), proofs=proofs)
    finally:
        jr.close()
    monkeypatch.undo()
    assert res.linked == n
    assert 0 < peak[0] <= release_mod.LIMIT + 2
    assert deleted_under(root) == [] and release_threads() == []
    assert {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file()} == want


EMFILE_RUN = r"""
import os, sys
from dedupd import testpoints
from dedupd.dedup import link_exec
from dedupd.dedup.hardlink import LinkPolicy, link_groups
from dedupd.dedup.journal import Journal
from dedupd.dedup.together import Proofs, Together
from dedupd.hashing import Hasher, HashStats, Stability
from dedupd.index.store import Store
from dedupd.scan.scanner import DupGroup, ScanOptions, scan
root, db, free = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = Store(f"sqlite:///{db}")
rep = scan(store, [root], ScanOptions())
files = [f._replace(head=None, full=None)
         for g in store.files_of_sizes(rep.scan_id, [50000]) for f in g]
proofs = Proofs()
res = list(Hasher(Stability(0.0), HashStats(), together=Together(proofs)).run([files]))
groups = [DupGroup(g.size, g.files) for r in res for g in r.groups]
jr = Journal(store)
held = []

def exhaust(_point, _path):  # after the PENDING commit: the swaps run out
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    for _ in range(min(free, len(held))):
        os.close(held.pop())

real_sync = link_exec.sync_filesystem
def sync(path):  # the swaps are over: descriptors back for the sync and DONE
    while held:
        os.close(held.pop())
    real_sync(path)
link_exec.sync_filesystem = sync
try:
    with testpoints.acting(("batch",), exhaust):
        r = link_groups(jr, groups, LinkPolicy("v", (root.encode(),)), proofs=proofs)
    print("linked", r.linked, dict(r.counts))
except OSError as e:  # EMFILE out of the batch: the rest left PENDING for recovery
    print("stopped", e)
while held:
    os.close(held.pop())
def target(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
print("deleted still held:", [t for t in map(target, os.listdir("/proc/self/fd"))
                              if t.endswith(" (deleted)")])
"""


@pytest.mark.parametrize("free", [0, 1, 2, 3, 4, 5, 6, 8, 10, 14, 20])
def test_out_of_descriptors_at_every_point_of_a_batch(link_tree: tuple[Path, Store],
                                                      tmp_path: Path, free: int) -> None:
    """A batch of 6 pairs run with only `free` descriptors left (EMFILE wherever the
    batch runs out: a directory handle, a temp link, the hold of an old copy): no
    traceback, every name keeps its bytes, and recovery then leaves nothing behind."""
    root, store = link_tree
    want = pairs_tree(root, 6)
    db = tmp_path / "emfile.db"
    r = subprocess.run([sys.executable, "-c", EMFILE_RUN, str(root), str(db), str(free)],
                       capture_output=True, text=True, timeout=120, cwd=REPO,
                       preexec_fn=lambda: __import__("resource").setrlimit(
                           __import__("resource").RLIMIT_NOFILE, (256, 256)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == "deleted still held: []", r.stdout
    got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.bin")}
    assert got == want, r.stdout
    s = Store(f"sqlite:///{db}")
    try:
        jr = Journal(s)
        recover_all(jr, "v")
        assert jr.unfinished("v") == []
        jr.close()
    finally:
        s.close()
    got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert got == want, r.stdout


def test_user_swaps_the_temp_name_between_hold_and_unlink(
        tmp_path: Path, tmpfs: Callable[..., Path], attacker: User,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real user who owns the duplicate's directory renames a file of its own over the
    temp name (which holds root's old copy after the exchange) right after the release
    opened it: root's files all keep their bytes, the kept inode is at the duplicate's
    name, no descriptor is left; what happens to the user's own file is recorded."""
    root = tmpfs() / "vol"
    root.mkdir()
    d = root / "d"
    d.mkdir()
    data = blob(77, 30_000)
    write(root / "a.bin", data)
    write(root / "a2.bin", data)
    os.link(root / "a.bin", root / "a-link.bin")  # kept
    write(d / "b.bin", data)
    attacker.owns(d)
    reachable(d)
    attacker.run('printf mine > "$1/mine"', str(d))
    store = Store(f"sqlite:///{tmp_path}/i.db")
    fired: list[bytes] = []
    real_hold = release_mod.Releaser.hold

    def hold(self: release_mod.Releaser, dir_fd: int, nm: bytes, dev: int) -> int | None:
        fd = real_hold(self, dir_fd, nm, dev)
        if not fired and nm.startswith(b".dedupd-tmp-") and os.path.samestat(
                os.fstat(dir_fd), os.stat(d)):
            fired.append(nm)
            attacker.run('mv -f "$1/mine" "$1/$2"', str(d), os.fsdecode(nm))
        return fd

    monkeypatch.setattr(release_mod.Releaser, "hold", hold)
    try:
        files = unhashed(store, root, 30_000)
        proofs = Proofs()
        res = list(Hasher(Stability(0.0), HashStats(), together=Together(proofs)).run([files]))
        groups = [DupGroup(g.size, g.files) for r in res for g in r.groups]
        jr = Journal(store)
        try:
            link_groups(jr, groups, LinkPolicy("v", (bytes(root),)), proofs=proofs)
            recover_all(jr, "v")
        finally:
            jr.close()
    finally:
        store.close()
    assert fired
    ino = inodes(root)
    assert ino["a.bin"] == ino["d/b.bin"] == ino["a2.bin"]
    for p in ("a.bin", "a2.bin", "d/b.bin"):
        assert (root / p).read_bytes() == data
    assert deleted_under(root) == []
    # The user's own file, renamed over our temp name in the window, went with the
    # name: a file of theirs in a directory of theirs, which they could remove
    # themselves (the previous lstat-then-unlink had the same window).
    assert sorted(p.name for p in d.iterdir()) == ["b.bin"]


def test_cold_head_reads_of_sets_that_part_at_once_leave_the_callers_thread(
        loopfs: Callable[..., Path], tmp_path: Path) -> None:
    """Same-size large files that all differ (fixed-size images, records), never read,
    on a cold cache: each set's first step is a head read from the disk. Those reads
    miss the page cache as much as any other, so the reader must stop being `warm`
    after the first such set and the others go to the pool's threads (read side by
    side at once, as before the change), not one after the other in the hasher's."""
    root = loopfs("ext4", "64M") / "vol"
    sizes = [2 * BUF + k for k in range(6)]
    for s in sizes:
        for k in range(3):
            write(root / f"{s}-{k}.bin", blob(1000 * s + k, s))
    store = Store(f"sqlite:///{tmp_path}/index.db")
    try:
        files = unhashed(store, root, *sizes)
    finally:
        store.close()
    os.sync()
    for f in files:
        fd = os.open(f.path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    groups = [[f for f in files if f.size == s] for s in sizes]
    threads: list[str] = []

    class Recorded(Together):
        def __call__(self, members: list[IndexedFile]) -> list[Got | Problem]:
            threads.append(threading.current_thread().name)
            return super().__call__(members)

    reader = Recorded(Proofs())
    res = list(Hasher(Stability(0.0), HashStats(), together=reader).run(groups))
    assert all(r.groups == () for r in res)
    me = threading.current_thread().name
    assert len(threads) == 6
    assert not reader.warm and threads[1:] != [me] * 5, threads


def test_killed_mid_batch_with_held_copies_frees_them_and_recovers(
        loopfs: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 right after the third old copy of a batch was unlinked while the release
    held it: the kernel lets go of every held inode with the process (their blocks are
    free once it is gone), recovery finishes, every name keeps its bytes."""
    from tests.integration.linktree import config, content, dedupd, dedupd_here, manifest
    base = loopfs("ext4", "128M")
    root = base / "vol"
    for k in range(4):
        for side in "ab":
            write(root / side / f"f{k}.bin", blob(500 + k, 4 << 20))
    cfg = config(base, {"v": {"kind": "plain", "path": str(root), "settle_seconds": 0,
                              "min_size": 1, "mode": "apply"}})
    before = content(manifest(root))
    os.sync()
    vfs = os.statvfs(root)
    free0 = vfs.f_bfree * vfs.f_frsize
    k = 1 + 3 * 3  # PENDING, then (link temp, exchange, unlink temp) x 3
    r = dedupd("run", "--once", "-c", str(cfg), env={"DEDUPD_TEST_KILL_AT_STEP": str(k)},
               check=False)
    assert r.returncode == -9, (r.returncode, r.stderr)
    os.sync()
    vfs = os.statvfs(root)
    freed = vfs.f_bfree * vfs.f_frsize - free0
    assert freed >= 3 * (4 << 20) * 0.95, freed  # minus the index's growth
    rc, out = dedupd_here("recover", "-c", str(cfg), "--json")
    assert rc == 0, out
    assert content(manifest(root)) == before
    assert dedupd_here("run", "--once", "-c", str(cfg))[0] == 0
    assert content(manifest(root)) == before
    assert len(set(inodes(root).values())) == 4
