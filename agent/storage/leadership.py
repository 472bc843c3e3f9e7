"""Leadership: one process per name, among every process on the same database, runs a duty at a time.

What only one replica may do at once (hold Discord's gateway, where two connections would hear every message
twice) runs under `Leadership.hold`: it campaigns until this process leads, runs the duty while it does, and
cancels the duty the moment leadership is lost. On SQLite one process owns the file and always leads; on
PostgreSQL the lock lives in a session of its own, so a process that dies loses it with its connection.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

Duty = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Role:
    """Where this process stands for one name: leading or not, and who leads as far as it can tell (its own
    identity when leading; None while nobody does, or when the holder cannot be seen)."""

    leading: bool
    leader: str | None = None


def replica_identity() -> str:
    """How other replicas (and an operator reading `/readyz` or `pg_stat_activity`) name this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Leadership(Protocol):
    """Elects one holder per name among the processes sharing a database."""

    identity: str

    async def hold(self, name: str, duty: Duty, on_change: Callable[[Role], None] | None = None) -> None:
        """Campaign for `name` until cancelled, running `duty` whenever this process leads.

        The duty is cancelled as soon as leadership is lost, and leadership is given up when the duty ends:
        `hold` then returns (or raises what the duty raised). `on_change` hears each new role, the outcome of
        the first attempt included, so a caller can tell a follower from a process still campaigning."""
        ...
