"""Helpers for the linker tests: build trees, take manifests, run the real CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

Manifest = dict[str, tuple[str, int, int]]


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def blob(seed: int, size: int = 64 * 1024) -> bytes:
    """Deterministic incompressible-looking bytes."""
    out = bytearray()
    h = hashlib.sha256(seed.to_bytes(8, "little")).digest()
    while len(out) < size:
        out += h
        h = hashlib.sha256(h).digest()
    return bytes(out[:size])


def manifest(root: Path, *, skip_dirs: tuple[str, ...] = ()) -> Manifest:
    """rel path -> (sha256, size, mtime_ns) of every regular file under root."""
    out: Manifest = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        for n in files:
            p = Path(dirpath) / n
            if p.is_symlink() or not p.is_file():
                continue
            st = p.stat()
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             st.st_size, st.st_mtime_ns)
    return out


def content(m: Manifest) -> dict[str, str]:
    """The manifest without mtimes: path -> sha256."""
    return {k: v[0] for k, v in m.items()}


def inodes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_ino
            for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def config(tmp: Path, volumes: dict[str, dict[str, Any]]) -> Path:
    lines = ["[database]", f'url = "sqlite:///{tmp}/index.db"']
    for name, keys in volumes.items():
        lines.append(f"[volumes.{name}]")
        for k, v in keys.items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, int | float):
                lines.append(f"{k} = {v}")
            elif isinstance(v, list | tuple):
                lines.append(f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
            else:
                lines.append(f'{k} = "{v}"')
    cfg = tmp / "dedupd.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def dedupd(*args: str, env: dict[str, str] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process."""
    full = {**os.environ, **(env or {})}
    r = subprocess.run([sys.executable, "-m", "dedupd", *args], capture_output=True,
                       text=True, env=full, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"dedupd {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def dedupd_here(*args: str) -> tuple[int, str]:
    """Run the CLI in this process (the same code path, without a fresh interpreter)."""
    import contextlib
    import io

    from dedupd.cli import main

    buf = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with contextlib.redirect_stdout(buf):
        rc = main(list(args))
        buf.flush()
    raw = buf.buffer.getvalue()  # type: ignore[attr-defined]
    return rc, raw.decode("utf-8", "surrogateescape")


def unfinished_ops(db: Path) -> list[tuple[int, str]]:
    import sqlite3

    with sqlite3.connect(db) as c:
        return list(c.execute("SELECT id, state FROM ops WHERE state NOT IN "
                              "('DONE', 'REFUSED', 'ROLLED_BACK', 'FAILED')"))


def lose_journal_states(db: Path) -> None:
    """Simulate a power cut after which only the synced PENDING rows survived."""
    import sqlite3

    with sqlite3.connect(db) as c:
        c.execute("UPDATE ops SET state = 'PENDING'")
