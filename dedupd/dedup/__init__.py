"""Dedup stages: planner (pure), verify, and the backends (extent, hardlink, crossdrive)."""
