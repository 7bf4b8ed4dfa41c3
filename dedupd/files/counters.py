"""The event counters of a pass (documented in docs/status.md)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Counters:
    """Event counters of a pass (documented in docs/status.md)."""

    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n
