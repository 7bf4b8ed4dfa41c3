"""The index's plain connection layer (dedupd/index/db.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dedupd.index import schema
from dedupd.index.db import SCHEMA_VERSION, TABLES, Db, IndexError_
from dedupd.index.store import Store


def test_table_list_matches_the_schema() -> None:
    # db.TABLES decides whether SQLAlchemy must be loaded to create tables
    assert sorted(TABLES) == sorted(schema.metadata.tables)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "mysql://x/y"])
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(IndexError_, match="cannot use database URL"):
        Db(url)


@pytest.mark.parametrize("fresh", [True, False])
def test_a_scan_does_not_load_sqlalchemy(tmp_path: Path, fresh: bool) -> None:
    url = f"sqlite:///{tmp_path}/i.db"
    if not fresh:
        Store(url).close()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a").write_bytes(b"x")
    code = ("import sys\n"
            "from dedupd.index.store import Store\n"
            "from dedupd.scan.scanner import ScanOptions, scan\n"
            f"s = Store({url!r})\n"
            f"scan(s, [{str(tmp_path / 't')!r}], ScanOptions())\n"
            "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy')))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "[]"


def test_each_thread_has_its_own_connection_and_writes_are_shared(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/i.db")
    conns: list[object] = []

    def work(k: int) -> None:
        conns.append(store.db.conn())
        store.set_meta(f"k{k}", str(k))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in conns}) == 4
    assert [store.get_meta(f"k{k}") for k in range(4)] == ["0", "1", "2", "3"]


def test_a_failed_transaction_is_rolled_back(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/i.db")
    with pytest.raises(RuntimeError), store.db.tx() as cur:
        cur.execute("INSERT INTO meta (host, key, value) VALUES (?, ?, ?)",
                    (store.host, "half", "done"))
        raise RuntimeError("boom")
    assert store.get_meta("half") is None


def test_a_transaction_inside_another_commits_and_rolls_back_with_it(tmp_path: Path) -> None:
    """The index writer puts several flushes in one transaction: a nested tx() joins
    the outer one (SQLite refused a BEGIN inside it), whose rollback undoes both."""
    store = Store(f"sqlite:///{tmp_path}/i.db")
    with pytest.raises(RuntimeError), store.db.tx():
        store.set_meta("inner", "1")  # its own tx() inside the outer one
        raise RuntimeError("boom")
    assert store.get_meta("inner") is None
    with store.db.tx():
        store.set_meta("inner", "2")
        store.set_meta("other", "3")
    assert (store.get_meta("inner"), store.get_meta("other")) == ("2", "3")
    with store.db.tx():  # the outer one ended: a new transaction, not a joined one
        store.set_meta("after", "4")
    assert store.get_meta("after") == "4"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_generated_ddl_is_current(dialect: str) -> None:
    # regenerate with: .venv/bin/python -m dedupd.index.schema
    from dedupd.index.ddl import SCHEMA_DDL

    assert SCHEMA_DDL[dialect] == schema.ddl(dialect)


def test_tables_made_from_the_ddl_match_sqlalchemy_create_all(tmp_path: Path) -> None:
    import sqlite3

    from sqlalchemy import create_engine

    Store(f"sqlite:///{tmp_path}/ours.db").close()
    schema.metadata.create_all(create_engine(f"sqlite:///{tmp_path}/theirs.db"))

    def layout(db: Path) -> list[tuple[str, str]]:
        with sqlite3.connect(db) as c:
            # (SQLAlchemy ends a WITHOUT ROWID table with blank lines, the DDL not)
            return sorted((n, sql.rstrip()) for n, sql in c.execute(
                "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"))

    assert layout(tmp_path / "ours.db") == layout(tmp_path / "theirs.db")


def test_an_index_of_a_newer_dedupd_is_refused_and_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/i.db"
    store = Store(url)
    with store.db.tx() as cur:
        cur.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION + 1),))
    store.close()
    before = (tmp_path / "i.db").read_bytes()
    with pytest.raises(IndexError_, match="upgrade dedupd") as e:
        Store(url)
    assert e.value.exit_code == 1
    assert (tmp_path / "i.db").read_bytes() == before
