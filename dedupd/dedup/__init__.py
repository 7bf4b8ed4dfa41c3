"""Deduplication: planners, backends and the safety machinery (verify, journal)."""
