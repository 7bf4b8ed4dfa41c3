"""The file index: the one Store class with its queries (plain DB-API, dedupd/index/db.py)."""
