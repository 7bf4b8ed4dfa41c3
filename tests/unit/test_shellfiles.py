"""Shell completion and the man page, generated from the parser (what `make install` installs)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from dedupd import shellfiles
from dedupd.commands import NAMES


def test_every_subcommand_is_in_the_man_page_and_completions(tmp_path):
    written = shellfiles.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(shellfiles.FILES.values())
    man = (tmp_path / "dedupd.1").read_text()
    assert man.startswith(".TH DEDUPD \"1\"")
    zsh = (tmp_path / "_dedupd").read_text()
    assert zsh.startswith("#compdef dedupd")
    for name in NAMES:
        roff = name.replace("-", "\\-")
        assert f".SH COMMAND \\fI\\,'dedupd {roff}'" in man, name
        assert f"{name}:" in zsh or f"\"{name}\"" in zsh or f"'{name}'" in zsh, name
    groff = shutil.which("groff")
    if groff:  # the page renders without a warning
        r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(tmp_path / "dedupd.1")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stderr, r.stderr


def _complete(script, words: list[str]) -> list[str]:
    """What bash offers after `words` (the last one being typed), using the script."""
    line = " ".join(words)
    cmd = (f"source {script}; complete -p dedupd >/dev/null || exit 3; "
           f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
           f"COMP_POINT={len(line)}; _shtab_dedupd; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_bash_completion_loads_and_completes(tmp_path):
    if shutil.which("bash") is None:
        pytest.fail("bash is needed")
    script = tmp_path / "dedupd.bash"
    script.write_text(shellfiles.completion("bash"))
    r = subprocess.run(["bash", "-c", f"source {script}; complete -p dedupd"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "dedupd" in r.stdout, r.stderr
    assert _complete(script, ["dedupd", "sc"]) == ["scan"]
    assert set(_complete(script, ["dedupd", ""])) >= set(NAMES)
    assert "--min-size" in _complete(script, ["dedupd", "scan", "--min"])
    (tmp_path / "conf.toml").write_text("")
    assert _complete(script, ["dedupd", "scan", "-c", f"{tmp_path}/con"]) == \
        [f"{tmp_path}/conf.toml"]
