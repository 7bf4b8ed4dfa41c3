"""dedupd: deduplicate, consolidate and back up a storage host."""

__version__ = "0.1.0"
