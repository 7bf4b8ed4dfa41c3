"""Tables of the index (see docs/schema.md).

Files are keyed by (filesystem id, ino): hardlinks are one file with several
names. No table stores st_dev: device numbers change with mount order, so each
pass maps them to filesystems rows (dedupd/index/fsmap.py). Every row belongs to
one host, directly or through its filesystem. Integers that may use all 64 bits
(ino, the XXH3-64 head hash) are stored
as signed 64-bit values through to_s64/from_s64 because both SQLite and
PostgreSQL BIGINT are signed.

Build-time only: `python -m dedupd.index.schema` writes dedupd/index/ddl.py, the
CREATE statements dedupd runs. SQLAlchemy is a development dependency (the
`dev` extra); nothing at runtime imports this module (docs/schema.md, "One query
style").
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
)

from dedupd.index.db import SCHEMA_VERSION, from_s64, to_s64

metadata = MetaData()
__all__ = ["SCHEMA_VERSION", "from_s64", "metadata", "to_s64"]

# Small key/value state. host 0 holds what belongs to the database (schema_version);
# everything else (per-volume generations, timestamps) belongs to one host.
meta = Table(
    "meta", metadata,
    Column("host", Integer, primary_key=True, autoincrement=False),
    Column("key", String(200), primary_key=True),
    Column("value", Text, nullable=False),
)

# One row per host sharing this database ([database] host): a name is bound to the
# machine-id that claimed it first, so two machines never write each other's rows.
hosts = Table(
    "hosts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("machine_id", String(200), nullable=False),
)

# A filesystem (or BTRFS subvolume, ZFS dataset) by its stable identity, never by
# st_dev: see docs/schema.md for the identity rules. Every file row refers to one.
filesystems = Table(
    "filesystems", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", Integer, nullable=False),
    Column("ident", Text, nullable=False),
    Column("fstype", String(50), nullable=False),
    Column("mountpoint", LargeBinary, nullable=False),  # where it was last seen
    Column("stable", Integer, nullable=False),  # 0: mount source + type (may move)
    UniqueConstraint("host", "ident", name="uq_filesystems_host_ident"),
)

scans = Table(
    "scans", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("finished", Float),
    Column("roots", Text, nullable=False),  # JSON list of surrogate-escaped paths
)

# Every directory that holds an indexed file, once: its name within its parent.
# A host's root directory ("/") has parent = -(host id) and an empty name, so two
# hosts' trees never meet. fs: the filesystem the directory was last listed on.
directories = Table(
    "directories", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("parent", BigInteger, nullable=False),
    Column("name", LargeBinary, nullable=False),
    Column("fs", Integer, nullable=False),
    Column("digest", LargeBinary),  # listing digest of the last walk (docs/schema.md)
    Index("uq_directories_parent_name", "parent", "name", unique=True),
)

# A name in a directory that holds a regular file: only its own name.
entries = Table(
    "entries", metadata,
    Column("dir", Integer, primary_key=True, autoincrement=False),
    Column("name", LargeBinary, primary_key=True),
    Column("ino", BigInteger, nullable=False),
    Column("seen", Integer, nullable=False),  # id of the last scan that saw it
    sqlite_with_rowid=False,
)

inodes = Table(
    "inodes", metadata,
    Column("fs", Integer, primary_key=True, autoincrement=False),
    Column("ino", BigInteger, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    # ctime_ns - mtime_ns: 0 (stored in no bytes) for most files, whose ctime is
    # their last write
    Column("ctime_delta", BigInteger, nullable=False),
    Column("head", BigInteger),  # XXH3-64 of the first HEAD_SIZE bytes
    Column("full", LargeBinary(16)),  # XXH3-128 of the whole file
    Column("seen", Integer, nullable=False),  # id of the last scan that saw it
    Column("unstable", Integer, nullable=False, default=0),  # changes seen in a row
    # no index by size: size groups are one pass over a scan's rows anyway
    sqlite_with_rowid=False,
)


# Consolidation provenance (see docs/consolidate.md): one row per source path per
# consolidation, naming the archive file that holds the same content. The source's
# identity and stat are kept so a re-run can trust an unchanged row without
# reading the file again.
provenance = Table(
    "provenance", metadata,
    Column("host", Integer, primary_key=True, autoincrement=False),
    Column("consolidation", String(200), primary_key=True),
    Column("source_key", LargeBinary(16), primary_key=True),  # path_key(source_path)
    Column("source_path", LargeBinary, nullable=False),
    Column("archive_key", LargeBinary(16), nullable=False),
    Column("archive_path", LargeBinary, nullable=False),
    Column("content", LargeBinary(16), nullable=False),  # XXH3-128 of the content
    Column("size", BigInteger, nullable=False),
    Column("src_fs", Integer, nullable=False),
    Column("src_ino", BigInteger, nullable=False),
    Column("src_mtime_ns", BigInteger, nullable=False),
    Column("src_ctime_ns", BigInteger, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Index("ix_provenance_archive", "archive_key"),
    Index("ix_provenance_source", "source_key"),
    Index("ix_provenance_content", "content"),  # `dedupd where` by content
)

# The journal of destructive dedup steps (dedupd/dedup/journal.py, docs/safety.md).
# A row is written (and committed) *before* each step it describes.
ops = Table(
    "ops", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", Integer, nullable=False),
    Column("volume", String(200), nullable=False),
    Column("kind", String(20), nullable=False),  # hardlink | crossdrive
    Column("state", String(20), nullable=False),
    Column("keep_path", LargeBinary, nullable=False),
    Column("dup_path", LargeBinary, nullable=False),
    Column("temp_path", LargeBinary),  # hardlink: the temporary link next to dup_path
    Column("dest_path", LargeBinary),  # crossdrive: the new name on the kept branch
    Column("quarantine_path", LargeBinary),
    Column("keep_fs", Integer, nullable=False),
    Column("keep_ino", BigInteger, nullable=False),
    Column("dup_fs", Integer, nullable=False),
    Column("dup_ino", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("dup_mtime_ns", BigInteger, nullable=False),
    Column("dirs", Text),  # JSON list of directories the op creates (crossdrive)
    Column("reason", Text),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
    Index("ix_ops_state", "state"),
)

# --- backups (dedupd/index/backups.py holds the queries) ---
# One row per backup attempt of one host. The remote manifest is the commit marker and the
# source of truth; this table remembers what a run was doing so the next run can
# resume it (state "uploading") and what `dedupd backups` reports locally.
backups = Table(
    "backups", metadata,
    Column("id", String(200), primary_key=True),  # backup id, also the object-key folder
    Column("job", String(200), nullable=False),
    Column("dataset", Text, nullable=False),
    Column("snapshot", Text, nullable=False),  # full name pool/ds@snap
    Column("guid", String(40), nullable=False),  # decimal text: GUIDs use all 64 bits
    Column("base_guid", String(40)),
    Column("state", String(20), nullable=False),  # uploading|complete|failed|abandoned|deleted
    Column("created_snapshot", Integer, nullable=False, default=0),  # 1: this run made it
    Column("chunks", Integer, nullable=False, default=0),
    Column("total_size", BigInteger, nullable=False, default=0),
    Column("started", Float, nullable=False),
    Column("finished", Float),
    Column("verified_at", Float),
    Column("verify_level", String(20)),
    Column("error", Text),
    # whose job this attempt is (two hosts may name their jobs alike); last, with a
    # default, because schema 5 added it to existing tables (migrate.py)
    Column("host", Integer, nullable=False, server_default="0"),
    Index("ix_backups_host_job_state", "host", "job", "state"),
)

# --- extent dedupe state (BTRFS/XFS volumes; see docs/btrfs.md) ---

extent_done = Table(
    "extent_done", metadata,
    # An inode confirmed (by FIEMAP) to share all its extents with ref_fs/ref_ino
    # while its content hash was `full`; a changed file gets a new hash, so the
    # row stops matching and the file is examined again.
    Column("fs", Integer, primary_key=True, autoincrement=False),
    Column("ino", BigInteger, primary_key=True, autoincrement=False),
    Column("full", LargeBinary(16), nullable=False),
    Column("ref_fs", Integer, nullable=False),
    Column("ref_ino", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("at", Float, nullable=False),
)

extent_refs = Table(
    "extent_refs", metadata,
    # The reference chosen for a group of identical files, so later members are
    # deduped against it and only it.
    Column("host", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("full", LargeBinary(16), primary_key=True),
    Column("fs", Integer, nullable=False),
    Column("ino", BigInteger, nullable=False),
)


# --- the answer of a scan, kept for the next unchanged rescan (dedupd/index/answers.py) ---

answers = Table(
    "answers", metadata,
    Column("host", Integer, primary_key=True, autoincrement=False),
    Column("key", String(64), primary_key=True),  # the roots and options (answers.key)
    # of the tree the walk listed: every directory's path and listing digest
    Column("fingerprint", LargeBinary(16), nullable=False),
    Column("epoch", BigInteger, nullable=False),  # meta hash_epoch when it was right
    Column("answer", LargeBinary, nullable=False),  # zlib of marshal (answers.pack)
)

# A hash the index held that is replaced or dropped while the stat it was read at
# stays (content changed behind an unchanged stat: extent passes' "differs", a
# verification): every kept answer may be wrong from then on. The hash_epoch row
# of meta (host 0) counts such rows; a head dropped because the full hash is now
# known, and a hash first written, are not counted (content as it was), nor are the
# hashes a new stat drops (a file recorded changed: every walk that lists one of its
# names sees that stat, so an answer listing it is void by its fingerprint; counting
# it voided every other tree's and host's answer at each change recorded).
_MOVED = ('OLD.size = NEW.size AND OLD.mtime_ns = NEW.mtime_ns AND OLD.ctime_delta = '
          'NEW.ctime_delta AND ((OLD."full" IS NOT NULL AND NEW."full" IS DISTINCT FROM '
          'OLD."full") OR (OLD.head IS NOT NULL AND NEW.head IS DISTINCT FROM OLD.head AND '
          '(NEW.head IS NOT NULL OR NEW."full" IS NULL)))')
# ... and every row with a full hash deleted (`inodes_gone`): a kept answer holds its
# members' rows as they were (answers.py) instead of reading them again, so a row
# dropped and made anew (without its hashes, which a first hash then sets uncounted)
# must void it
_GONE = 'OLD."full" IS NOT NULL'
_EPOCH = ("INSERT INTO meta (host, \"key\", value) VALUES (0, 'hash_epoch', '0') "
          'ON CONFLICT (host, "key") DO NOTHING')
_BUMP = ("UPDATE meta SET value = {cast} WHERE host = 0 AND \"key\" = 'hash_epoch'")
# The same counted per host (answers.py reads its host's): hosts sharing a PostgreSQL
# inventory write only their own filesystems' rows, so one host's deletions and moved
# hashes no longer void every other host's answers. The host of OLD.fs; every host's
# when that filesystem row is gone already. The host-0 counter and its triggers stay
# for the previous dedupd, which reads it (and would replace a trigger of its name).
# A host's row is made at first use (answers.epoch), from host 0's value then.
_BUMP_HOST = ("UPDATE meta SET value = {cast} WHERE \"key\" = 'hash_epoch' AND host <> 0 "
              "AND (host = (SELECT host FROM filesystems WHERE id = OLD.fs) OR NOT EXISTS "
              "(SELECT 1 FROM filesystems WHERE id = OLD.fs))")
_SQLITE_CAST = "CAST(CAST(value AS INTEGER) + 1 AS TEXT)"  # a counter in meta, plus one
_PG_CAST = "(value::bigint + 1)::text"
TRIGGERS = {
    "sqlite": (
        _EPOCH,
        "CREATE TRIGGER IF NOT EXISTS inodes_hash_moved AFTER UPDATE OF head, \"full\" ON "
        f"inodes FOR EACH ROW WHEN {_MOVED.replace('IS DISTINCT FROM', 'IS NOT')} BEGIN "
        + _BUMP.format(cast=_SQLITE_CAST) + "; END",
        "CREATE TRIGGER IF NOT EXISTS inodes_gone AFTER DELETE ON inodes FOR EACH ROW WHEN "
        f"{_GONE} BEGIN " + _BUMP.format(cast=_SQLITE_CAST)
        + "; END",
        "CREATE TRIGGER IF NOT EXISTS inodes_hash_moved_host AFTER UPDATE OF head, \"full\" "
        f"ON inodes FOR EACH ROW WHEN {_MOVED.replace('IS DISTINCT FROM', 'IS NOT')} BEGIN "
        + _BUMP_HOST.format(cast=_SQLITE_CAST) + "; END",
        "CREATE TRIGGER IF NOT EXISTS inodes_gone_host AFTER DELETE ON inodes FOR EACH ROW "
        f"WHEN {_GONE} BEGIN " + _BUMP_HOST.format(cast=_SQLITE_CAST) + "; END",
    ),
    "postgresql": (
        _EPOCH,
        "CREATE OR REPLACE FUNCTION dedupd_hash_moved() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN " + _BUMP.format(cast=_PG_CAST)
        + "; RETURN NULL; END $$",
        "CREATE OR REPLACE TRIGGER inodes_hash_moved AFTER UPDATE OF head, \"full\" ON inodes "
        f"FOR EACH ROW WHEN ({_MOVED}) EXECUTE FUNCTION dedupd_hash_moved()",
        f"CREATE OR REPLACE TRIGGER inodes_gone AFTER DELETE ON inodes FOR EACH ROW WHEN "
        f"({_GONE}) EXECUTE FUNCTION dedupd_hash_moved()",
        "CREATE OR REPLACE FUNCTION dedupd_hash_moved_host() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN " + _BUMP_HOST.format(cast=_PG_CAST)
        + "; RETURN NULL; END $$",
        "CREATE OR REPLACE TRIGGER inodes_hash_moved_host AFTER UPDATE OF head, \"full\" ON "
        f"inodes FOR EACH ROW WHEN ({_MOVED}) EXECUTE FUNCTION dedupd_hash_moved_host()",
        f"CREATE OR REPLACE TRIGGER inodes_gone_host AFTER DELETE ON inodes FOR EACH ROW WHEN "
        f"({_GONE}) EXECUTE FUNCTION dedupd_hash_moved_host()",
    ),
}


# Directory rows dropped, counted (meta `dirs_dropped` of host 0): SQLite gives a
# dropped row's id to the next directory made, so a Store that cached the id (the
# daemon's, mid-pass) would record into another path's row; it empties its cache
# when the count moved (DirTree.drop_stale). PostgreSQL never reuses an id.
_DROPS = ("INSERT INTO meta (host, \"key\", value) VALUES (0, 'dirs_dropped', '0') "
          'ON CONFLICT (host, "key") DO NOTHING')
_BUMP_DROPS = "UPDATE meta SET value = {cast} WHERE host = 0 AND \"key\" = 'dirs_dropped'"
DIR_DROPS = {
    "sqlite": (
        _DROPS,
        "CREATE TRIGGER IF NOT EXISTS directories_dropped AFTER DELETE ON directories FOR "
        "EACH ROW BEGIN " + _BUMP_DROPS.format(cast=_SQLITE_CAST) + "; END",
    ),
    "postgresql": (
        _DROPS,
        "CREATE OR REPLACE FUNCTION dedupd_dirs_dropped() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN " + _BUMP_DROPS.format(cast=_PG_CAST)
        + "; RETURN NULL; END $$",
        "CREATE OR REPLACE TRIGGER directories_dropped AFTER DELETE ON directories FOR EACH "
        "STATEMENT EXECUTE FUNCTION dedupd_dirs_dropped()",
    ),
}


# create_all (the tests' reference layout) makes them too
event.listen(meta, "after_create", DDL(_EPOCH))  # type: ignore[no-untyped-call]
event.listen(meta, "after_create", DDL(_DROPS))  # type: ignore[no-untyped-call]
for _dialect, _stmts in TRIGGERS.items():
    for _stmt in _stmts[1:]:
        event.listen(inodes, "after_create",
                     DDL(_stmt).execute_if(dialect=_dialect))  # type: ignore[no-untyped-call]
    for _stmt in DIR_DROPS[_dialect][1:]:
        event.listen(directories, "after_create",
                     DDL(_stmt).execute_if(dialect=_dialect))  # type: ignore[no-untyped-call]


def ddl(dialect: str) -> tuple[str, ...]:
    """CREATE statements (idempotent) for every table and index, as the given
    dialect ("sqlite" or "postgresql") spells them, then the hash_epoch row and its
    trigger."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.engine import Dialect
    from sqlalchemy.schema import CreateIndex, CreateTable

    pg: Dialect = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
    d = pg if dialect == "postgresql" else sqlite.pysqlite.dialect()
    out: list[str] = []
    for t in metadata.sorted_tables:
        out.append(str(CreateTable(t, if_not_exists=True).compile(dialect=d)).strip())
        for ix in sorted(t.indexes, key=lambda i: str(i.name)):
            out.append(str(CreateIndex(ix, if_not_exists=True).compile(dialect=d)).strip())
    return (*out, *TRIGGERS[dialect], *DIR_DROPS[dialect])


def write_ddl_module(path: str) -> None:
    """Write dedupd/index/ddl.py: the statements above, so that creating an index
    needs no SQLAlchemy (tests/unit/test_index_db.py checks it is current)."""
    lines = ['"""Generated by `python -m dedupd.index.schema` from schema.py: do not edit."""',
             "", "# ruff: noqa: E501", "", "SCHEMA_DDL: dict[str, tuple[str, ...]] = {"]
    for dialect in ("sqlite", "postgresql"):
        lines.append(f"    {dialect!r}: (")
        lines.extend(f"        {stmt!r}," for stmt in ddl(dialect))
        lines.append("    ),")
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys

    write_ddl_module(sys.argv[1] if len(sys.argv) > 1 else __file__.replace("schema.py",
                                                                              "ddl.py"))
