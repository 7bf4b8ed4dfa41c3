"""layout.Renderer: the memoised render of a run's names equals render() exactly."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime

import pytest

from dedupd.consolidate.layout import Fields, Renderer, _dir_template, render

NAMES = [b"IMG_0001.JPG", b"caf\xc3\xa9.jpg", b"bad\xff\xfe.bin", b".bashrc", b"noext",
         b".dedupd-tmp-x", b".dedupd-archive.lock", b"a.dedupd-b", b"_x", b"..x", b"x..",
         b".", b".."]
WHENS = [datetime(2001, 2, 3, 4, 5, 6), datetime(1999, 12, 31), datetime(2001, 2, 3, 23),
         None]
LAYOUTS = ["{year}/{month:02d}/{name}", "{year}/{name}", "{name}", "{source}/{year}/{name}",
           "{year}/{month:02d}/{day:02d}/{stem}{ext}", "{year}//{month}/{name}",
           "{year:.0}/{name}", "photos/{year}-{month:02d}/{name}", "{year}/{month}/x{name}",
           ".dedupd-x/{year}/{name}", "a/./{year}/{name}", "{year}/{name:>20}",
           "{year}/{name!s}", "{year}/{{name}}/{name}", "{year}/{stem}/{name}"]


def _outcome(f: Callable[..., bytes], *args: object) -> bytes | str:
    try:
        return f(*args)
    except ValueError as e:
        return f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_renderer_equals_render(layout: str) -> None:
    r = Renderer(layout, "undated")
    for _ in range(2):  # the second round from the memo
        for name, when, root in itertools.product(NAMES, WHENS, (b"/mnt/d1", b"/srv/d2/")):
            want = _outcome(render, layout, "undated", Fields(name, root, when))
            assert _outcome(r.render, name, root, when) == want, (name, when, root)


def test_only_layouts_ending_in_a_bare_name_take_the_shortcut() -> None:
    assert _dir_template("{year}/{month:02d}/{name}") == "{year}/{month:02d}"
    assert _dir_template("{source}/{name}") == "{source}"
    for layout in ("{name}", "{year}/{name:>20}", "{year}/{name!s}", "{year}/{stem}/{name}",
                   "{year}/x{name}", "{year}/{stem}{ext}", "{year}/{{name}}"):
        assert _dir_template(layout) is None, layout


def test_renderer_forgets_dates_past_its_bound() -> None:
    r = Renderer("{year}/{month:02d}/{day:02d}/{name}", "undated")
    r.MAX_DIRS = 3
    for day in range(1, 10):
        assert r.render(b"a", b"/s", datetime(2020, 1, day)) == b"2020/01/%02d/a" % day
        assert len(r._dirs) <= 3
