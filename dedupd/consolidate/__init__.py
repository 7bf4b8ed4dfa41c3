"""Consolidate backup shares into one dated archive (see docs/consolidate.md).

Modules by role: inventory (stage 1: index + group by content), plan (stage 2:
what to copy where, what is already there), dates (EXIF / mtime), layout (the
path template and collisions), compare (byte compare), execute (verified copies
and provenance rows), run (one whole run and its report).
"""
