"""Replicas, conversation claims and shared counters on PostgreSQL: what lets several `parley run` processes
share one database. A claim's epoch is a fencing token: `fence` is called inside a write's transaction and
locks the claim row (FOR SHARE), so the claim cannot change hands until the write commits or rolls back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager

from agent.storage.errors import ClaimLost
from agent.storage.models import Claim, Replica
from agent.storage.postgres.database import Conn, Database, affected
from agent.storage.postgres.notices import listening

# The NOTIFY channel of a person's Stop, to every replica (NOTIFY takes payloads of under 8,000 bytes).
STOPPED = "parley_answer_stopped"


async def fence(conn: Conn, claim: Claim | None) -> None:
    """Raise ClaimLost (and so roll the write back) unless the claim, when there is one, still holds."""
    if claim is None:
        return
    held = await conn.fetchval(
        "SELECT 1 FROM conversation_claims WHERE conversation = $1 AND owner = $2 AND epoch = $3 FOR SHARE",
        claim.conversation,
        claim.owner,
        claim.epoch,
    )
    if held is None:
        raise ClaimLost(f"the claim of {claim.conversation} (epoch {claim.epoch}) is no longer held")


class PostgresReplicas:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def beat(self, replica: Replica, *, now: float) -> None:
        await self.db.execute(
            "INSERT INTO replicas (id, host, pid, started_at, heartbeat_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            replica.id,
            replica.host,
            replica.pid,
            replica.started_at,
            now,
        )

    async def live(self, *, now: float, ttl_s: float) -> list[Replica]:
        rows = await self.db.fetch(
            "SELECT id, host, pid, started_at, heartbeat_at FROM replicas WHERE heartbeat_at > $1 "
            "ORDER BY started_at, id",
            now - ttl_s,
        )
        return [Replica(*r) for r in rows]

    async def leave(self, replica_id: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("DELETE FROM conversation_claims WHERE owner = $1", replica_id)
            await conn.execute("DELETE FROM replicas WHERE id = $1", replica_id)

    async def ask_stop(self, request: str) -> None:
        await self.db.execute("SELECT pg_notify($1, $2)", STOPPED, request)

    def watch_stops(self, heard: Callable[[str], None]) -> AbstractAsyncContextManager[None]:
        def notice(payload: str) -> None:
            if payload:  # "" after a reconnection: a stop asked meanwhile is not known, and not re-read
                heard(payload)

        return listening(self.db.url, self.db.location, STOPPED, notice)


class PostgresClaims:
    shared = True

    def __init__(self, db: Database) -> None:
        self.db = db

    async def take(self, conversation: str, owner: str, *, ttl_s: float, now: float) -> Claim | None:
        row = await self.db.fetchrow(
            "INSERT INTO conversation_claims AS c (conversation, owner, epoch, expires_at) VALUES ($1, $2, 1, $3) "
            "ON CONFLICT (conversation) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at, "
            "epoch = CASE WHEN c.owner = excluded.owner THEN c.epoch ELSE c.epoch + 1 END "
            "WHERE c.owner = excluded.owner OR c.expires_at <= $4 "
            "RETURNING conversation, owner, epoch, expires_at",
            conversation,
            owner,
            now + ttl_s,
            now,
        )
        return Claim(str(row[0]), str(row[1]), int(row[2]), float(row[3])) if row else None

    async def renew(self, owner: str, *, ttl_s: float, now: float) -> set[str]:
        rows = await self.db.fetch(
            "UPDATE conversation_claims SET expires_at = $1 WHERE owner = $2 AND expires_at > $3 "
            "RETURNING conversation",
            now + ttl_s,
            owner,
            now,
        )
        return {str(r[0]) for r in rows}

    async def release(self, claim: Claim) -> None:
        await self.db.execute(
            "DELETE FROM conversation_claims WHERE conversation = $1 AND owner = $2 AND epoch = $3",
            claim.conversation,
            claim.owner,
            claim.epoch,
        )

    async def waiting(self, platforms: Iterable[str], *, now: float, limit: int = 100) -> list[str]:
        names = list(platforms)
        if not names:
            return []
        rows = await self.db.fetch(
            "SELECT i.conversation FROM inbox i WHERE i.delivered_at IS NULL AND i.state <> 'failed' "
            "AND i.platform = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM conversation_claims c "
            "WHERE c.conversation = i.conversation AND c.expires_at > $2) "
            "GROUP BY i.conversation ORDER BY MIN(i.id) LIMIT $3",
            names,
            now,
            limit,
        )
        return [str(r[0]) for r in rows]


class PostgresLimits:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def hit(self, key: str, *, window_s: float, now: float) -> int:
        count = await self.db.fetchval(
            "INSERT INTO rate_counts AS r (key, window_start, count) VALUES ($1, $2, 1) "
            "ON CONFLICT (key, window_start) DO UPDATE SET count = r.count + 1 RETURNING count",
            key,
            now - now % window_s,
        )
        return int(count)


async def prune_counts(conn: Conn, before: float) -> int:
    """Counters of windows that ended long ago count nothing any more."""
    return affected(await conn.execute("DELETE FROM rate_counts WHERE window_start < $1", before))
