"""The ground floor: the vocabulary every other part speaks.

events.py: FileEvent (one file as a walk or a change source saw it), Ident
(what must not have moved since a file was hashed), Problem (a file that could
not be used, and why), WalkStats; counters.py: the event counters of a pass.
Nothing here imports any other dedupd module, so every floor may import it.
"""
