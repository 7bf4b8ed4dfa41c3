"""The only place that changes files (link, rename, unlink, copy, mkdir).

Split by role: `link` holds the hardlink/rename/unlink primitives of the dedup
safety contract, `swap` the step by step swap of a hardlink batch's name made of
them, `release` the unlinked old copies let go of in a thread, `names` renameat2
and the hold, `copy` the verified copy used by
consolidation, `durable` a filesystem's writes made durable at once (syncfs),
`whole` a small file replaced at once (metrics, manifests),
`single` a file written in place only when its name is its one name (locks, logs).
Everything else in dedupd reads files but never writes them outside this package.
"""
