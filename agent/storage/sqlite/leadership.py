"""Leadership on SQLite: one process owns the file, so it leads every name at once and for good."""

from __future__ import annotations

from collections.abc import Callable

from agent.storage.leadership import Duty, Role, replica_identity


class SoleLeadership:
    def __init__(self, identity: str | None = None) -> None:
        self.identity = identity or replica_identity()

    async def hold(self, name: str, duty: Duty, on_change: Callable[[Role], None] | None = None) -> None:
        if on_change is not None:
            on_change(Role(leading=True, leader=self.identity))
        await duty()
