"""The units pass `systemd-analyze verify`; `make install` installs a working dedupd."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.components import require_tools

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "systemd").glob("*.service")) + sorted((REPO / "systemd").glob("*.timer"))
pytestmark = pytest.mark.integration


def verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def rewritten(dst: Path, exe: str) -> list[Path]:
    """Copies of the units whose ExecStart points at exe (it must exist to verify)."""
    out = []
    for u in UNITS:
        p = dst / u.name
        p.write_text(u.read_text().replace("/usr/local/bin/dedupd", exe))
        out.append(p)
    return out


def test_units_verify_with_the_venv_dedupd(tmp_path):
    require_tools("systemd-analyze")
    exe = str(Path(sys.executable).parent / "dedupd")
    assert os.access(exe, os.X_OK)
    r = verify(rewritten(tmp_path, exe))
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # and the check has teeth: a missing ExecStart binary fails it
    r = verify(rewritten(tmp_path, "/nonexistent/dedupd"))
    assert r.returncode != 0 and "not executable" in r.stderr


def test_service_settings_the_daemon_relies_on():
    p = configparser.ConfigParser(strict=False, interpolation=None)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read(REPO / "systemd" / "dedupd.service")
    s = p["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert int(s["WatchdogSec"]) > 0 and s["Nice"] == "19" and s["IOSchedulingClass"] == "idle"
    assert s["RuntimeDirectory"] == s["StateDirectory"] == s["ConfigurationDirectory"] == "dedupd"
    assert s["RestartPreventExitStatus"] == "78"
    # room for [daemon] stop_timeout (30 s) before SIGKILL
    assert int(s["TimeoutStopSec"]) > 30
    text = (REPO / "systemd" / "dedupd.service").read_text().splitlines()
    start = text.index(next(x for x in text if "--- hardening" in x))
    hardening = text[start:text.index("[Install]")]
    for i, line in enumerate(hardening):
        if "=" in line and not line.startswith("#"):
            assert hardening[i - 1].startswith("#"), f"no comment above {line!r}"


@pytest.mark.slow
def test_make_install_staged(tmp_path):
    require_tools("make", "systemd-analyze")
    dest = Path(tempfile.mkdtemp(prefix="dd5-inst-"))
    try:
        r = subprocess.run(["make", "-C", str(REPO), "install", f"DESTDIR={dest}",
                            f"PYTHON={shutil.which('python3') or sys.executable}"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        exe = dest / "opt/dedupd/bin/dedupd"
        v = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
        assert v.stdout.strip().startswith("dedupd ")
        assert os.readlink(dest / "usr/local/bin/dedupd") == "/opt/dedupd/bin/dedupd"
        assert (dest / "etc/dedupd/dedupd.toml.example").read_text() == \
            (REPO / "etc/dedupd.toml").read_text()
        share = dest / "usr/local/share"
        comp = share / "bash-completion/completions/dedupd"
        c = subprocess.run(["bash", "-c", f"source {comp}; complete -p dedupd"],
                           capture_output=True, text=True, timeout=60)
        assert c.returncode == 0 and "_shtab_dedupd" in c.stdout, c.stderr
        assert (share / "zsh/site-functions/_dedupd").read_text().startswith("#compdef dedupd")
        assert ".SH COMMAND \\fI\\,'dedupd restore'" in (share / "man/man1/dedupd.1").read_text()
        units = [dest / "etc/systemd/system" / u.name for u in UNITS]
        assert all(u.exists() for u in units)
        staged = rewritten(tmp_path, str(exe))
        r = verify(staged)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(dest, ignore_errors=True)
