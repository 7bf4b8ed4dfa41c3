"""The only place that changes files (link, rename, unlink, copy, mkdir).

Split by role: `link` holds the hardlink/rename/unlink primitives of the dedup
safety contract, `copy` the verified copy used by consolidation. Everything
else in dedupd reads files but never writes them outside this package.
"""
