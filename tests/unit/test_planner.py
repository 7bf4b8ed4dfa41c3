"""Extent dedupe planning (pure): reference choice, read-only members, batches."""

from __future__ import annotations

from dedupd.dedup.planner import Member, batched, choose_reference, plan_group


def m(i: int, mtime: int = 100, **kw: bool) -> Member:
    return Member((1, i), f"/v/f{i:04d}".encode(), mtime, **kw)


def test_oldest_is_reference_when_nothing_shares() -> None:
    group = [m(1, 300), m(2, 100), m(3, 200)]
    assert choose_reference(group).key == (1, 2)


def test_file_already_sharing_wins_over_older_ones() -> None:
    group = [m(1, 100), m(2, 500, shares=True), m(3, 50)]
    assert choose_reference(group).key == (1, 2)


def test_remembered_reference_is_kept_while_present() -> None:
    group = [m(1, 100, shares=True), m(2, 900)]
    assert choose_reference(group, remembered=(1, 2)).key == (1, 2)
    assert choose_reference(group, remembered=(9, 9)).key == (1, 1)


def test_readonly_member_is_never_a_destination_but_may_be_the_reference() -> None:
    group = [m(1, 50, readonly=True), m(2, 100), m(3, 200, readonly=True)]
    plan = plan_group(group, 120)
    assert plan is not None
    assert plan.reference.key == (1, 1)
    assert [d.key for d in plan.destinations] == [(1, 2)]
    assert [x.key for x in plan.skipped_readonly] == [(1, 3)]


def test_401st_file_is_the_only_destination() -> None:
    group = [m(0, 10)] + [m(i, 100 + i, done=True) for i in range(1, 401)] + [m(401, 999)]
    plan = plan_group(group, 120, remembered=(1, 0))
    assert plan is not None
    assert [d.key for d in plan.destinations] == [(1, 401)]
    assert len(plan.skipped_done) == 400


def test_done_marks_for_another_reference_do_not_count() -> None:
    # The remembered reference vanished: members done against it are re-checked.
    group = [m(1, 10, done=True), m(2, 20, done=True)]
    plan = plan_group(group, 120, remembered=(7, 7))
    assert plan is not None and len(plan.destinations) == 1


def test_batches_respect_the_size() -> None:
    group = [m(i, 100 + i) for i in range(250)]
    plan = plan_group(group, 120)
    assert plan is not None
    assert [len(b) for b in plan.batches] == [120, 120, 9]
    assert len({d.key for d in plan.destinations}) == 249
    assert batched([], 5) == ()


def test_single_member_needs_no_plan() -> None:
    assert plan_group([m(1)], 120) is None
