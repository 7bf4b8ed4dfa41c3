"""Small pieces: sizes, path display, roots, log format, proc errors."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest

from dedupd import log, proc
from dedupd.commands.common import parse_size
from dedupd.files.mounts import unescape as unescape_mount
from dedupd.index.db import from_s64, to_s64
from dedupd.output import show_path
from dedupd.scan.walk import normalize_roots


@pytest.mark.parametrize(("text", "n"), [("0", 0), ("4096", 4096), ("64K", 65536),
                                         ("1M", 1 << 20), ("2GiB", 2 << 30), ("3kb", 3072)])
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")


def test_show_path_escapes() -> None:
    assert show_path(b"/a/\xff\n\tb") == "/a/\\xff\\n\\tb"
    assert show_path("/plain/caf\u00e9") == "/plain/caf\u00e9"


def test_normalize_roots_drops_nested_and_repeated(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "ab").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "link")
    got = normalize_roots([tmp_path / "a", tmp_path / "a" / "b", tmp_path / "link",
                           tmp_path / "ab"])
    assert got == [os.fsencode(tmp_path / "a"), os.fsencode(tmp_path / "ab")]


def test_unescape_mountinfo() -> None:
    assert unescape_mount(b"/mnt/with\\040space\\012nl") == b"/mnt/with space\nnl"


def test_s64_round_trip() -> None:
    for x in (0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1):
        assert -(1 << 63) <= to_s64(x) < (1 << 63)
        assert from_s64(to_s64(x)) == x


def test_journald_priority_prefix(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    log.setup("debug")
    logging.getLogger("dedupd.t").warning("two\nlines")  # a message is one line (a name's
    err = capsys.readouterr().err  # newline escaped: test_hostile_names_shown.py)
    assert err.splitlines() == ["<4>dedupd.t: two\\nlines"]
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("dedupd.t").exception("failed")
    err = capsys.readouterr().err  # a traceback's lines keep the record's priority
    assert err.splitlines()[0] == "<3>dedupd.t: failed" and len(err.splitlines()) > 2
    assert all(line.startswith("<3>") for line in err.splitlines()), err
    monkeypatch.delenv("JOURNAL_STREAM")
    log.setup("info", as_json=True)
    logging.getLogger("dedupd.t").error("x")
    assert '"level": "error"' in capsys.readouterr().err


def test_proc_errors_are_typed() -> None:
    with pytest.raises(proc.MissingTool):
        proc.run(["definitely-not-a-tool-xyz"])
    with pytest.raises(proc.ProcError) as ei:
        proc.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert ei.value.returncode == 3 and "boom" in str(ei.value)
    with pytest.raises(proc.ProcError, match="timed out"):
        proc.run(["sleep", "5"], timeout=0.2)
    assert proc.run(["printf", "a\\377"]).stdout == b"a\xff"
