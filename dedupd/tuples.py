"""NamedTuple for the records on `dedupd scan`'s path (docs/architecture.md).

typing.NamedTuple's class syntax, built by collections.namedtuple without the
typing module: typing (with re, enum and their compiled patterns) is ~5 ms of
every rescan's start-up, paid while the second core has nothing to do yet
(docs/schema.md, "The walk of a rescan"); after the fork, typing's class
syntax would still compile each field's annotation (~0.15 ms a field). Type
checkers see typing.NamedTuple itself (TYPE_CHECKING), so a class declared with
this one is checked as any NamedTuple is.

What it supports is what those modules use: fields with their annotations (in
order), defaults, a docstring, methods, classmethods and properties. It makes the
same kind of class (a tuple subclass with _make, _replace, _fields, ...), and
refuses, as typing does, a body that defines __new__, __init__, __slots__,
__getnewargs__ or one of namedtuple's _names.
"""

from __future__ import annotations

# typing's own flag without importing typing: mypy takes a name TYPE_CHECKING as True
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    from collections import namedtuple

    # what collections.namedtuple makes itself, never copied from the class body
    _OWN = frozenset({"__module__", "__qualname__", "__annotations__", "__doc__",
                      "__dict__", "__weakref__"})
    # what a class body may not define, as typing.NamedTuple refuses it: namedtuple's
    # own would be replaced (or __slots__ ignored), without a word
    _REFUSED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__"})

    class _Maker(type):
        def __new__(mcls, name, bases, ns):
            if not bases:  # NamedTuple itself, below
                return super().__new__(mcls, name, bases, ns)
            if bases != (NamedTuple,):
                raise TypeError("a NamedTuple can only inherit from NamedTuple")
            fields = list(ns.get("__annotations__", {}))
            defaults = [ns[f] for f in fields if f in ns]
            if fields[len(fields) - len(defaults):] != [f for f in fields if f in ns]:
                raise TypeError(f"{name}: a field without a default follows one with")
            cls = namedtuple(name, fields, defaults=defaults or None, module=ns["__module__"])
            cls.__qualname__ = ns.get("__qualname__", name)
            cls.__annotations__ = dict(ns.get("__annotations__", {}))
            if ns.get("__doc__") is not None:
                cls.__doc__ = ns["__doc__"]
            for key, value in ns.items():
                if key in cls._fields or key in _OWN:
                    continue
                if key in _REFUSED or (key.startswith("_") and key in cls.__dict__
                                       and not key.startswith("__")):
                    raise AttributeError(f"{name}: cannot overwrite {key}")
                setattr(cls, key, value)
            return cls

    class NamedTuple(metaclass=_Maker):
        """Base of a class-syntax named tuple (see the module docstring)."""
