"""The runtime dependencies in pyproject.toml are the ones dedupd imports.

The design card named sdnotify, aiofiles and boto3; the README's
"Dependencies" section says which are used and why the others are not. A
declared package nobody imports costs every install for nothing, and one
imported but undeclared breaks a fresh install.
"""

from __future__ import annotations

import ast
import re
import socket
import tomllib
from pathlib import Path

from dedupd.notify import Notifier

ROOT = Path(__file__).resolve().parents[2]

# distribution -> the module dedupd imports it as (the design card's, and the rest)
MODULE = {"xxhash": "xxhash", "sqlalchemy": "sqlalchemy", "psycopg": "psycopg",
          "sdnotify": "sdnotify", "python-daemon": "daemon", "boto3": "boto3",
          "botocore": "botocore", "aiofiles": "aiofiles", "exifread": "exifread"}


def declared() -> set[str]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower()
            for d in doc["project"]["dependencies"]}


# build-time only: generates dedupd/index/ddl.py with SQLAlchemy (a dev dependency)
GENERATORS = {ROOT / "dedupd" / "index" / "schema.py"}


def imported() -> set[str]:
    mods: set[str] = set()
    for py in set((ROOT / "dedupd").rglob("*.py")) - GENERATORS:
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                mods.add(node.module.split(".")[0])
    return mods


def test_declared_runtime_dependencies_are_imported_and_vice_versa() -> None:
    deps, mods = declared(), imported()
    for dist in deps & MODULE.keys():
        assert MODULE[dist] in mods, f"{dist} is declared but dedupd never imports it"
    for dist, mod in MODULE.items():
        if mod in mods:
            assert dist in deps, f"dedupd imports {mod} but pyproject does not declare {dist}"


def test_no_runtime_module_imports_the_ddl_generator() -> None:
    for py in set((ROOT / "dedupd").rglob("*.py")) - GENERATORS:
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) and node.module else [])
            assert not any(n.startswith(("dedupd.index.schema", "sqlalchemy"))
                           for n in names), py


def test_readme_says_which_design_card_libraries_are_used() -> None:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Dependencies", 1)[1].split("\n## ", 1)[0]
    for lib in ("sdnotify", "aiofiles", "boto3"):
        assert f"`{lib}`" in section


def test_status_outside_latin1_reaches_systemd(tmp_path: Path) -> None:
    """One reason sdnotify is not used: it encodes Latin-1 and drops what does not fit."""
    path = str(tmp_path / "n")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    n = Notifier(path)
    try:
        assert n.status("scanning /srv/фото")
        assert s.recv(100).decode() == "STATUS=scanning /srv/фото"
    finally:
        n.close()
        s.close()
