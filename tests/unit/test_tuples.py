"""dedupd.tuples.NamedTuple: typing.NamedTuple's class syntax without typing (the
modules imported before `dedupd scan` forks its walk declare their records with it)."""

from __future__ import annotations

import pickle

import pytest

from dedupd.files.events import FileEvent, Problem
from dedupd.scan.walk import DirListed, WalkOptions
from dedupd.tuples import NamedTuple


class Point(NamedTuple):
    """A point."""

    x: int
    y: int = 0
    tags: tuple[str, ...] = ()

    @classmethod
    def origin(cls) -> Point:
        return cls(0)

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)

    def moved(self, dx: int) -> Point:
        return self._replace(x=self.x + dx)


def test_fields_defaults_methods_and_tuple_behaviour() -> None:
    p = Point(3, -4)
    assert p == (3, -4, ()) and isinstance(p, tuple) and p.tags == ()
    assert Point._fields == ("x", "y", "tags") and Point._field_defaults == {"y": 0, "tags": ()}
    assert Point.origin() == Point(0, 0) and p.norm1 == 7 and p.moved(1) == Point(4, -4)
    assert Point._make([1, 2, ("a",)]).tags == ("a",) and hash(p) == hash((3, -4, ()))
    assert Point.__doc__ == "A point." and Point.__qualname__ == "Point"
    assert repr(p) == "Point(x=3, y=-4, tags=())" and Point.__module__ == __name__
    assert pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(AttributeError):
        p.x = 1  # type: ignore[misc]


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError):
        class Bad(NamedTuple):  # noqa: F841
            a: int = 0
            b: int  # type: ignore[misc]


@pytest.mark.parametrize("name", ["__new__", "__init__", "__getnewargs__", "__slots__",
                                  "_make", "_replace", "_fields"])
def test_what_namedtuple_makes_cannot_be_overridden(name: str) -> None:
    """As typing.NamedTuple refuses it (mypy too): before, a class's own __new__ (or
    __init__, __slots__) silently replaced or was dropped in favour of namedtuple's."""
    body = {"__module__": __name__, "__annotations__": {"a": "int"},
            name: (lambda *a, **k: None) if name != "__slots__" else ("a",)}
    with pytest.raises(AttributeError, match=f"Bad: cannot overwrite {name}"):
        type(NamedTuple)("Bad", (NamedTuple,), body)


def test_the_walks_records_are_such_tuples() -> None:
    assert WalkOptions() == (1, (), False) and WalkOptions(min_size=5).min_size == 5
    assert DirListed(b"/d", b"x", 2, True).same is True
    ev = FileEvent(b"/a", 1, 2, 3, 4, 5, 6, 7, 8, 9)
    assert ev.key == (1, 2) and ev._replace(size=10).size == 10
    assert Problem(b"/a", "vanished", "gone").reason == "vanished"
