"""The ground floor: the vocabulary every other part speaks.

events.py: FileEvent (one file as a walk or a change source saw it), Ident
(what must not have moved since a file was hashed), Problem (a file that could
not be used, and why), WalkStats; counters.py: the event counters of a pass;
mounts.py: the one parser of /proc/self/mountinfo; fsid.py: the stable identity
of a filesystem and of this host; fsioctl.py: the ioctls that name a filesystem.
Nothing here imports a dedupd module above it (only the leaf modules errors.py
and proc.py), so every floor may import it.
"""
