"""Interop with duplicate finders users already ran (jdupes, rmlint, czkawka).

`reports` parses their JSON into candidate groups (pure); `verify` trusts none
of it: every file is re-statted and hashed before it counts.
"""
