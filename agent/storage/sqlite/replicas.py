"""Replicas, claims and limits on SQLite: one process holds the file, so they live in its memory.

The interfaces are the ones PostgreSQL implements for several replicas; here the only replica is this process,
every claim is its own, and a restart starts them afresh (whatever the previous process held is free).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace

from agent.storage.errors import ClaimLost
from agent.storage.models import Claim, Replica
from agent.storage.sqlite.database import Database


class SqliteReplicas:
    def __init__(self) -> None:
        self._replicas: dict[str, Replica] = {}

    async def beat(self, replica: Replica, *, now: float) -> None:
        self._replicas[replica.id] = replace(replica, heartbeat_at=now)

    async def live(self, *, now: float, ttl_s: float) -> list[Replica]:
        fresh = (r for r in self._replicas.values() if r.heartbeat_at > now - ttl_s)
        return sorted(fresh, key=lambda r: r.started_at)

    async def leave(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    async def ask_stop(self, request: str) -> None:
        """This process is the only one: the answer it did not find here is not under way anywhere."""

    @asynccontextmanager
    async def watch_stops(self, heard: Callable[[str], None]) -> AsyncIterator[None]:
        yield


class SqliteClaims:
    shared = False

    def __init__(self, db: Database) -> None:
        self.db = db
        self._claims: dict[str, Claim] = {}
        self._epochs: dict[str, int] = {}

    async def take(self, conversation: str, owner: str, *, ttl_s: float, now: float) -> Claim | None:
        held = self._claims.get(conversation)
        if held is not None and held.owner != owner and held.expires_at > now:
            return None
        if held is not None and held.owner == owner:
            claim = replace(held, expires_at=now + ttl_s)
        else:
            epoch = self._epochs.get(conversation, 0) + 1
            self._epochs[conversation] = epoch
            claim = Claim(conversation, owner, epoch, now + ttl_s)
        self._claims[conversation] = claim
        return claim

    async def renew(self, owner: str, *, ttl_s: float, now: float) -> set[str]:
        kept = set()
        for conversation, claim in list(self._claims.items()):
            if claim.owner == owner and claim.expires_at > now:
                self._claims[conversation] = replace(claim, expires_at=now + ttl_s)
                kept.add(conversation)
        return kept

    async def release(self, claim: Claim) -> None:
        if self.holds(claim):
            del self._claims[claim.conversation]

    async def waiting(self, platforms: Iterable[str], *, now: float, limit: int = 100) -> list[str]:
        names = list(platforms)
        if not names:
            return []
        rows = await self.db.fetchall(
            "SELECT conversation FROM inbox WHERE delivered_at IS NULL AND state != 'failed' "
            f"AND platform IN ({', '.join('?' * len(names))}) GROUP BY conversation ORDER BY MIN(id)",
            names,
        )
        free = []
        for (conversation,) in rows:
            held = self._claims.get(conversation)
            if held is None or held.expires_at <= now:
                free.append(str(conversation))
            if len(free) == limit:
                break
        return free

    def holds(self, claim: Claim) -> bool:
        held = self._claims.get(claim.conversation)
        return held is not None and (held.owner, held.epoch) == (claim.owner, claim.epoch)

    def fence(self, claim: Claim | None) -> None:
        """Raise ClaimLost unless the claim (when there is one) still holds its conversation."""
        if claim is not None and not self.holds(claim):
            raise ClaimLost(f"the claim of {claim.conversation} (epoch {claim.epoch}) is no longer held")


class SqliteLimits:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, float], int] = {}

    async def hit(self, key: str, *, window_s: float, now: float) -> int:
        start = now - now % window_s
        if len(self._counts) > 10_000:  # drop finished windows now and then
            self._counts = {k: n for k, n in self._counts.items() if k[1] >= start}
        count = self._counts.get((key, start), 0) + 1
        self._counts[(key, start)] = count
        return count
