"""`dedupd check-config` refuses every config that cannot work, before a run.

Each case is a whole config file fed to the real command: the error must name
the file, the key and the problem, on one line, with exit status 78. The pure
rules (config_rules.py) hold for every command that loads a config; the ones
that look at the machine (preflight.py) also run at every start of `run`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dedupd import cli, config
from dedupd.errors import EXIT_CONFIG, EXIT_TEMPFAIL, ConfigError

SRC = "sources = ['{t}/src']\n"


def _vol(name: str, path: str, kind: str = "plain") -> str:
    return f"[volumes.{name}]\nkind = '{kind}'\npath = '{path}'\n"


def _cons(archive: str, extra: str = "") -> str:
    return f"[consolidate.c]\n{SRC}archive = '{archive}'\n{extra}"


# (config text, key, words of the problem); {t} is the test's directory
CASES = [
    (_vol("a", "{t}/nope"), "volumes.a.path", "does not exist"),
    (_vol("a", "{t}/afile"), "volumes.a.path", "is a file"),
    (_vol("a", "{t}/d1") + _vol("b", "{t}/d1/sub"), "volumes.b.path", "inside volumes.a"),
    (_vol("a", "{t}/d1/sub") + _vol("b", "{t}/d1"), "volumes.b.path", "contains volumes.a"),
    (_vol("a", "{t}/d1") + _vol("b", "{t}/d1/", "btrfs"), "volumes.b.path",
     "two kinds: btrfs here and plain in volumes.a"),
    (_cons("{t}/src"), "consolidate.c.archive", "same directory as the source"),
    (_cons("{t}/src/archive"), "consolidate.c.archive", "is inside the source"),
    (_cons("{t}"), "consolidate.c.archive", "contains the source"),
    (_cons("{t}/arch", "layout = '{{nosuchfield}}/{{name}}'\n"), "consolidate.c.layout",
     "unknown placeholder {nosuchfield}"),
    (_cons("{t}/arch", "layout = '{{year:q}}/{{name}}'\n"), "consolidate.c.layout",
     "Unknown format code 'q'"),
    (_cons("{t}/arch", "layout = '../../escaped/{{name}}'\n"), "consolidate.c.layout",
     "inside the archive"),
    (_cons("{t}/arch", "layout = '/etc/{{name}}'\n"), "consolidate.c.layout",
     "inside the archive"),
    (_cons("{t}/arch", "undated_dir = '../../x'\n"), "consolidate.c.undated_dir",
     "inside the archive"),
    ("[backups.b]\ndataset = 't/d'\nschedule = 'whenever'\n[backups.b.target]\n"
     "kind = 'rclone'\nremote = 'r'\n", "backups.b.schedule", "not a schedule"),
    ("[daemon]\nruntime_dir = '{t}/afile'\n", "daemon.runtime_dir", "is a file"),
    (_vol("p", "{t}/d1", "pool") + "branches = ['{t}/d2', '{t}/d2/']\n", "volumes.p.branches",
     "listed twice"),
    ("[volumes.\"../../evil\"]\nkind = 'plain'\npath = '{t}/d1'\n", 'volumes."../../evil"',
     "not usable as a name"),
    ("[daemon]\npass_interval = nan\n", "daemon.pass_interval", "finite number; got nan"),
    (_vol("a", "{t}/d1") + "max_backoff_hours = inf\n", "volumes.a.max_backoff_hours",
     "finite number; got inf"),
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for d in ("d1/sub", "d2", "src", "arch"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    return tmp_path


@pytest.mark.parametrize(("text", "key", "words"), CASES,
                         ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_check_config_refuses(tree: Path, capsys: pytest.CaptureFixture[str], text: str,
                              key: str, words: str) -> None:
    cfg = tree / "bad.toml"
    cfg.write_text(text.format(t=tree))
    rc = cli.main(["check-config", "-c", str(cfg)])
    err = capsys.readouterr().err
    assert rc == EXIT_CONFIG, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback
    assert lines[0].startswith(f"dedupd: error: {cfg}: {key}: "), err
    assert words in lines[0]


def test_the_same_configs_pass_once_fixed(tree: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    """The cases above fail for the reason they name, not for something near it."""
    good = (_vol("a", "{t}/d1") + _vol("b", "{t}/d2", "btrfs")
            + _cons("{t}/arch", "layout = '{{year}}/{{month:02d}}/{{name}}'\n"
                    "undated_dir = 'no-date'\n")
            + "[daemon]\nruntime_dir = '{t}/run'\npass_interval = 60.5\n")
    cfg = tree / "good.toml"
    cfg.write_text(good.format(t=tree))
    assert cli.main(["check-config", "-c", str(cfg)]) == 0, capsys.readouterr().err


def test_symlinked_overlap_is_found_on_the_machine(tree: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "link").symlink_to(tree / "d1" / "sub")
    cfg = tree / "c.toml"
    cfg.write_text((_vol("a", "{t}/d1") + _vol("b", "{t}/link")).format(t=tree))
    config.load(cfg)  # lexically apart: loading alone cannot know
    assert cli.main(["check-config", "-c", str(cfg)]) == EXIT_CONFIG
    assert "volumes.b.path" in capsys.readouterr().err


def test_pure_rules_hold_for_every_loader(tree: Path) -> None:
    """A bad layout or NaN is refused by config.load itself (scan, status, the daemon)."""
    cfg = tree / "c.toml"
    cfg.write_text("[daemon]\nstop_timeout = nan\n")
    with pytest.raises(ConfigError, match="finite"):
        config.load(cfg)


def test_run_refuses_a_missing_volume_path_in_one_line(
        tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing at a run's start: temporary (75), the disk may not be mounted yet;
    a file where the volume should be is a config error (78)."""
    cfg = tree / "c.toml"
    cfg.write_text(_vol("a", "{t}/gone").format(t=tree))
    rc = cli.main(["run", "--once", "-c", str(cfg), "--db", f"sqlite:///{tree}/i.db"])
    err = capsys.readouterr().err
    assert rc == EXIT_TEMPFAIL
    assert err.strip() == (f"dedupd: error: {cfg}: volumes.a.path: {tree}/gone does not "
                           "exist (not mounted yet?)")
    cfg.write_text(_vol("a", "{t}/afile").format(t=tree))
    rc = cli.main(["run", "--once", "-c", str(cfg), "--db", f"sqlite:///{tree}/i.db"])
    assert rc == EXIT_CONFIG and "is a file" in capsys.readouterr().err
