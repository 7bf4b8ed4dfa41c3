"""Hashing and byte compare in one read (dedup/together.py, issue 16): the hashes are
the reader's, the proofs name only equal bytes, and a proven pair is still refused
when either file changes after it was read."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dedupd import testpoints
from dedupd.dedup import hardlink, link_exec
from dedupd.dedup.hardlink import LinkPolicy, LinkResult, link_groups
from dedupd.dedup.journal import Journal
from dedupd.dedup.together import BUF, Proofs, Together, read_together
from dedupd.files.events import Ident, Problem
from dedupd.hashing import Hasher, HashStats, Stability
from dedupd.hashing.read import HEAD_SIZE, Got, read_one
from dedupd.index.store import IndexedFile, Store
from dedupd.scan.scanner import DupGroup, ScanOptions, scan
from tests.integration.linktree import blob, inodes, write

pytestmark = pytest.mark.integration
SIZE = 3 * BUF + 1000  # several steps, a short last one


def unhashed(store: Store, root: Path, size: int, *more: int) -> list[IndexedFile]:
    """The indexed members of one size, as a pass that has not read them yet sees them
    (with `more` sizes: the members of each, one list after the other)."""
    rep = scan(store, [str(root)], ScanOptions())
    files = [f for g in store.files_of_sizes(rep.scan_id, [size, *more]) for f in g]
    return sorted((f._replace(head=None, full=None) for f in files),
                  key=lambda f: (f.size, f.path))


def by_name(files: list[IndexedFile]) -> dict[str, IndexedFile]:
    return {os.path.basename(f.path).decode(): f for f in files}


def test_outcomes_are_the_readers_and_proofs_name_equal_bytes(link_tree: tuple[Path, Store]
                                                              ) -> None:
    root, store = link_tree
    data = blob(1, SIZE)
    other = data[:BUF + 5] + b"!" + data[BUF + 6:]  # differs in the second step
    for name, content in (("a", data), ("b", data), ("c", other), ("d", other),
                          ("e", b"?" + data[1:]), ("f", data[:-1] + b"?"), ("g", data)):
        write(root / f"{name}.bin", content)
    files = unhashed(store, root, SIZE)
    proofs = Proofs()
    got = read_together(files, proofs)
    for f, g in zip(files, got, strict=True):
        if f.path.endswith(b"/e.bin"):  # equal to none from its first step (a head's):
            assert g == read_one(f, False)  # read no further, what a head read gives
        else:  # head, full hash and bytes read: the reader's own
            assert g == read_one(f, True)
    n = {k.removesuffix(".bin"): f.ident for k, f in by_name(files).items()}
    assert proofs.equal(n["a"], n["b"]) and proofs.equal(n["a"], n["g"])
    assert proofs.equal(n["c"], n["d"])
    for x, y in (("a", "c"), ("a", "e"), ("a", "f"), ("e", "f"), ("c", "e")):
        assert not proofs.equal(n[x], n[y])
    assert len(proofs) == 5  # e and f equal nothing: no proof names them
    # A proof holds for the identities read, not for a file that changed since.
    assert not proofs.equal(n["a"], n["b"]._replace(ctime_ns=n["b"].ctime_ns + 1))


def test_a_file_changed_before_its_read_is_a_problem_and_unproven(link_tree: tuple[Path, Store]
                                                                  ) -> None:
    root, store = link_tree
    for name in ("a", "b", "c"):
        write(root / f"{name}.bin", blob(2, SIZE))
    files = unhashed(store, root, SIZE)
    with open(root / "c.bin", "r+b") as fh:  # same size, new bytes, after indexing
        fh.write(b"edited")
    proofs = Proofs()
    got = read_together(files, proofs)
    assert isinstance(got[0], Got) and isinstance(got[1], Got)
    assert isinstance(got[2], Problem) and got[2].reason == "changed"
    n = by_name(files)
    assert proofs.equal(n["a.bin"].ident, n["b.bin"].ident)
    assert not proofs.equal(n["a.bin"].ident, n["c.bin"].ident)


def test_hasher_gives_the_same_results_with_and_without_together(link_tree: tuple[Path, Store]
                                                                 ) -> None:
    root, store = link_tree
    small, large = 50_000, SIZE
    for name, content in (("s1", blob(3, small)), ("s2", blob(3, small)),
                          ("s3", blob(4, small)), ("l1", blob(5, large)),
                          ("l2", blob(5, large)), ("l3", blob(5, large)[:-1] + b"!"),
                          ("l4", blob(6, large))):
        write(root / f"{name}.bin", content)
    both = unhashed(store, root, small, large)
    groups = [[f for f in both if f.size == small], [f for f in both if f.size == large]]

    def run(together: Together | None) -> list[tuple[object, ...]]:
        res = Hasher(Stability(0.0), HashStats(), together=together).run(groups)
        return sorted((r.size, sorted((g.full, sorted(f.path for f in g.files))
                                      for g in r.groups), sorted(map(repr, r.updates)))
                      for r in res)

    proofs = Proofs()
    assert run(Together(proofs)) == run(None)
    n = {k: f.ident for g in groups for k, f in by_name(g).items()}
    assert proofs.equal(n["s1.bin"], n["s2.bin"]) and proofs.equal(n["l1.bin"], n["l2.bin"])
    assert not proofs.equal(n["l1.bin"], n["l3.bin"])  # equal heads, compared to the end


def test_members_read_whole_at_once_part_with_their_heads(link_tree: tuple[Path, Store]
                                                          ) -> None:
    """The hasher's whole_first (issue 16): members never read are read whole side by
    side at once, with no head read before; one that parts from every other in the
    first step gets its head only, and is read whole again (alone) only when that head
    is another's, as after a head read."""
    root, store = link_tree
    data = blob(7, SIZE)
    near = data[:5000] + b"!" + data[5001:]  # a's head (4 KiB), then other bytes
    for name, content in (("a", data), ("b", data), ("n", near), ("m", near),
                          ("p", data[:6000] + b"?" + data[6001:]), ("x", blob(8, SIZE))):
        write(root / f"{name}.bin", content)
    files = unhashed(store, root, SIZE)
    reads: list[tuple[str, ...]] = []

    class Recorded(Together):
        def __call__(self, members: list[IndexedFile]) -> list[Got | Problem]:
            reads.append(tuple(sorted(os.path.basename(f.path).decode() for f in members)))
            return super().__call__(members)

    proofs = Proofs()
    stats = HashStats()
    (r,) = Hasher(Stability(0.0), stats, together=Recorded(proofs)).run([files])
    assert reads == [("a.bin", "b.bin", "m.bin", "n.bin", "p.bin", "x.bin")]
    assert sorted(sorted(os.path.basename(f.path) for f in g.files) for g in r.groups) == \
        [[b"a.bin", b"b.bin"], [b"m.bin", b"n.bin"]]
    n = by_name(files)
    ups = {u[1]: u for u in (*r.updates, *(u for g in r.groups for u in g.updates))}
    x = n["x.bin"]  # parted in the first step, a head of its own: read no further
    assert ups[x.ino][2:4] == (read_one(x, False).head, None)
    p = n["p.bin"]  # parted too, with a's head: read whole again
    assert ups[p.ino][2:4] == read_one(p, True)[:2] and ups[p.ino][3] != r.groups[0].full
    # a, b, m, n whole; x its first step (a head's); p two steps (it parts after its
    # head), then whole again
    assert stats.bytes_read == 4 * SIZE + HEAD_SIZE + (HEAD_SIZE + BUF) + SIZE


def test_a_member_read_whole_at_once_meets_one_hashed_in_an_earlier_pass(
        link_tree: tuple[Path, Store]) -> None:
    """An earlier pass's member known by its head only, and new members read whole side
    by side: the old member is read whole too and joins the new ones it equals."""
    root, store = link_tree
    data = blob(9, SIZE)
    for name, content in (("old", data), ("new", data), ("new2", data),
                          ("other", blob(10, SIZE))):
        write(root / f"{name}.bin", content)
    files = unhashed(store, root, SIZE)
    files = [f._replace(head=read_one(f, False).head) if f.path.endswith(b"/old.bin") else f
             for f in files]
    (r,) = Hasher(Stability(0.0), HashStats(), together=Together(Proofs())).run([files])
    assert [sorted(os.path.basename(f.path) for f in g.files) for g in r.groups] == \
        [[b"new.bin", b"new2.bin", b"old.bin"]]


def hashed_groups(files: list[IndexedFile], proofs: Proofs) -> list[DupGroup]:
    res = list(Hasher(Stability(0.0), HashStats(), together=Together(proofs)).run([files]))
    return [DupGroup(g.size, g.files) for r in res for g in r.groups]


def link_editing(store: Store, root: Path, groups: list[DupGroup], proofs: Proofs,
                 edited: Path | None, quarantine: bool = False
                 ) -> tuple[LinkResult, dict[bytes, str]]:
    """link_groups with proofs; a user edits `edited` (same size) once the batch's
    PENDING rows are committed."""
    q = bytes(root / ".q") if quarantine else None
    def edit(_point: str, _path: bytes) -> None:
        if edited is not None:
            with open(edited, "r+b") as fh:
                fh.seek(BUF + 10)
                fh.write(b"edited by a user")

    jr = Journal(store)
    try:
        with testpoints.acting(("batch",), edit):
            res = link_groups(jr, groups, LinkPolicy("v", (bytes(root),), quarantine_dir=q),
                              proofs=proofs)
        return res, {os.path.basename(r.spec.dup_path): r.state for r in jr.history("v")}
    finally:
        jr.close()


@pytest.fixture
def compares(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many files each byte compare of the linker read beside the kept one."""
    seen: list[int] = []
    real = link_exec.compare_group

    def counting(a, a_id, others):  # type: ignore[no-untyped-def]
        seen.append(len(others))
        return real(a, a_id, others)

    monkeypatch.setattr(link_exec, "compare_group", counting)
    return seen


def test_proven_group_is_linked_without_a_second_read(link_tree: tuple[Path, Store],
                                                      compares: list[int]) -> None:
    root, store = link_tree
    for name in ("a", "b", "c"):
        write(root / f"{name}.bin", blob(7, SIZE))
    proofs = Proofs()
    groups = hashed_groups(unhashed(store, root, SIZE), proofs)
    res, states = link_editing(store, root, groups, proofs, None)
    assert res.linked == 2 and compares == []
    assert len(set(inodes(root).values())) == 1
    assert set(states.values()) == {"DONE"}


@pytest.mark.parametrize("quarantine", [False, True])
@pytest.mark.parametrize("who", ["b.bin", "a.bin"])
def test_writer_after_pending_refused_on_a_proven_pair(link_tree: tuple[Path, Store],
                                                       compares: list[int], who: str,
                                                       quarantine: bool) -> None:
    # The proof was made when the files were hashed; a user then edits the duplicate
    # (or the kept file) after the batch's PENDING rows: refused, nothing linked (with
    # a quarantine too, whose link would move the duplicate's ctime).
    root, store = link_tree
    for name in ("a", "b"):
        write(root / f"{name}.bin", blob(8, SIZE))
    os.link(root / "a.bin", root / "a-link.bin")  # a has the most names: it is kept
    proofs = Proofs()
    groups = hashed_groups(unhashed(store, root, SIZE), proofs)
    res, states = link_editing(store, root, groups, proofs, root / who, quarantine)
    assert res.linked == 0 and dict(res.counts) == {"changed": 1}
    assert not (root / ".q").exists() or list((root / ".q").iterdir()) == []
    assert compares == []
    assert b"edited by a user" in (root / who).read_bytes()
    ino = inodes(root)
    assert ino["a.bin"] == ino["a-link.bin"] != ino["b.bin"]
    assert states == {b"b.bin": "REFUSED"}


def test_unproven_pairs_are_still_compared(link_tree: tuple[Path, Store],
                                           compares: list[int]) -> None:
    # A forged group (equal hashes claimed, bytes differ in the last byte) and no
    # proof for it: the linker reads both and refuses; proofs of others do not help.
    root, store = link_tree
    data = blob(9, SIZE)
    write(root / "a.bin", data)
    write(root / "b.bin", data[:-1] + b"!")
    write(root / "c.bin", data)
    files = by_name(unhashed(store, root, SIZE))
    proofs = Proofs()
    read_together([files["a.bin"], files["c.bin"]], proofs)  # a and c proven equal
    forged = DupGroup(SIZE, (files["a.bin"], files["b.bin"], files["c.bin"]))
    res, states = link_editing(store, root, [forged], proofs, None)
    assert res.linked == 1 and dict(res.counts) == {"content_differs": 1}
    assert compares == [1]  # only b was read again
    assert (root / "b.bin").read_bytes().endswith(b"!")
    ino = inodes(root)
    assert ino["a.bin"] == ino["c.bin"] != ino["b.bin"]
    assert states == {b"b.bin": "REFUSED", b"c.bin": "DONE"}


def test_same_size_different_files_cost_a_head_each(link_tree: tuple[Path, Store]) -> None:
    """Many large files of one size, all different (fixed-size images, records): read
    whole at once, each parts in the first step and costs what its head read did."""
    root, store = link_tree
    for k in range(6):
        write(root / f"r{k}.bin", blob(20 + k, SIZE))
    files = unhashed(store, root, SIZE)
    stats = HashStats()
    (r,) = Hasher(Stability(0.0), stats, together=Together(Proofs())).run([files])
    assert r.groups == () and stats.bytes_read == 6 * HEAD_SIZE
    assert sorted(u[2:4] for u in r.updates) == sorted(read_one(f, False)[:2] for f in files)


def test_reused_buffers_compare_only_the_bytes_read(link_tree: tuple[Path, Store]) -> None:
    """A thread's buffers go from one read to the next (together._buffers) and a short
    chunk is compared in place: bytes left in the buffers by an earlier, larger file
    must never make two files equal, nor two equal files different, nor enter a hash."""
    root, store = link_tree
    big, small = 2 * BUF + HEAD_SIZE, 700
    x = blob(30, big)
    pairs = {"big": (x, x[:HEAD_SIZE] + blob(31, big - HEAD_SIZE)),  # part after the head
             "eq": (blob(32, small), blob(32, small)),
             "last": (blob(33, small), blob(33, small)[:-1] + b"!"),
             "first": (b"?" + blob(34, small)[1:], blob(34, small))}
    for name, (a, b) in pairs.items():
        write(root / name / "a.bin", a)
        write(root / name / "b.bin", b)
    files = unhashed(store, root, big, small)
    proofs = Proofs()
    for name in ("big", "eq", "last", "first", "eq"):  # one thread, in this order
        group = [f for f in files if f"/{name}/".encode() in f.path]
        got = read_together(group, proofs)
        a, b = (f.ident for f in group)
        assert proofs.equal(a, b) == (name == "eq"), name
        if name == "big":  # both buffers now hold a different whole chunk
            assert [g.nread for g in got if isinstance(g, Got)] == [HEAD_SIZE + BUF] * 2
        else:  # the hashes of the bytes read, and of nothing else
            assert got == [read_one(f, True) for f in group], name


def test_warm_groups_are_read_in_the_callers_thread_cold_ones_in_the_pool(
        loopfs: Callable[..., Path], tmp_path: Path) -> None:
    """The hasher calls the side-by-side reader in its own thread while the page cache
    answers its reads (no lock handed between threads at each read); once a read
    misses, the rest go to the reader threads. The outcomes are the same either way."""
    root = loopfs("ext4", "64M") / "vol"
    for k in range(3):
        for c in ("x", "y"):
            write(root / f"{c}{k}.bin", blob(40 + k, SIZE + k))
    store = Store(f"sqlite:///{tmp_path}/index.db")
    try:
        files = unhashed(store, root, SIZE, SIZE + 1, SIZE + 2)
    finally:
        store.close()
    groups = [[f for f in files if f.size == SIZE + k] for k in range(3)]
    threads: list[str] = []

    class Recorded(Together):
        def __call__(self, members: list[IndexedFile]) -> list[Got | Problem]:
            threads.append(threading.current_thread().name)
            return super().__call__(members)

    def found(reader: Together) -> list[list[bytes]]:
        res = Hasher(Stability(0.0), HashStats(), together=reader).run(groups)
        return sorted(sorted(os.path.basename(f.path) for f in g.files)
                      for r in res for g in r.groups)

    warm = Recorded(Proofs())
    assert found(warm) == [[b"x0.bin", b"y0.bin"], [b"x1.bin", b"y1.bin"],
                           [b"x2.bin", b"y2.bin"]]
    me = threading.current_thread().name
    assert threads == [me, me, me] and warm.warm
    os.sync()
    for f in files:  # out of the page cache: the next reads go to the disk
        fd = os.open(f.path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    threads.clear()
    cold = Recorded(Proofs())
    assert found(cold) == found(Together(Proofs()))
    assert threads[0] == me and not cold.warm
    assert len(threads) == 3 and all(t.startswith("hash") for t in threads[1:])


def test_a_dry_run_takes_the_proof_and_compares_the_rest(link_tree: tuple[Path, Store],
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A dry run describes a pair read side by side and found equal, at the identities
    its names still have, without reading it again (as an apply links it); a pair with
    no proof is compared, and refused when its bytes differ."""
    root, store = link_tree
    data = blob(11, SIZE)
    for name, content in (("a", data), ("b", data), ("c", data), ("d", data[:-1] + b"!")):
        write(root / f"{name}.bin", content)
    files = by_name(unhashed(store, root, SIZE))
    read: list[bytes] = []
    real = hardlink.same_bytes

    def counting(a: bytes, a_id: Ident, b: bytes, b_id: Ident) -> bool:
        read.append(os.path.basename(b))
        return real(a, a_id, b, b_id)

    monkeypatch.setattr(hardlink, "same_bytes", counting)
    proofs = Proofs()
    read_together([files["a.bin"], files["b.bin"]], proofs)  # a and b proven equal
    forged = DupGroup(SIZE, (files["a.bin"], files["b.bin"], files["c.bin"], files["d.bin"]))
    before = inodes(root)
    res = link_groups(None, [forged], LinkPolicy("v", (bytes(root),)), dry_run=True,
                      proofs=proofs)
    assert sorted(read) == [b"c.bin", b"d.bin"]  # b was proven: not read again
    assert sorted(os.path.basename(a["replace"]) for a in res.actions) == ["b.bin", "c.bin"]
    assert dict(res.counts) == {"content_differs": 1}
    assert inodes(root) == before
