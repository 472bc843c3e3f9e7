"""The durable inbox on PostgreSQL: every incoming message, its state and its reply.

A message is stored before the platform is acknowledged, so a crash never loses it; the unique key on
(platform, event key) makes a redelivery a no-op, even when two replicas receive it at once. The reply is
stored with the `answered` state in the same transaction as the turns and the reasoning chain, and
`delivered_at` is set once the platform took it, so a restart re-answers only unanswered messages and
re-delivers only undelivered replies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from agent.messages import IncomingMessage, Reply
from agent.storage.models import Claim, InboxEntry, State
from agent.storage.postgres.database import Conn, Database, marks
from agent.storage.postgres.replicas import fence
from agent.storage.rows import INBOX_COLUMNS, NEW_INBOX_COLUMNS, inbox_entry, inbox_values, reply_json


async def answer_in(conn: Conn, entry_id: int, reply: Reply, error: str | None = None) -> None:
    """Store the reply and mark the message answered, inside the caller's transaction (the exchange's)."""
    await conn.execute(
        "UPDATE inbox SET state = 'answered', reply = $1, error_id = $2, error = $3, updated_at = $4 WHERE id = $5",
        reply_json(reply),
        reply.error_id,
        error,
        time.time(),
        entry_id,
    )


class PostgresInbox:
    """The inbox table. Every method is one statement, so one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def accept(self, message: IncomingMessage) -> InboxEntry | None:
        """Store a new message; None when this platform event is already in the inbox (a redelivery)."""
        entry_id = await self.db.fetchval(
            f"INSERT INTO inbox ({NEW_INBOX_COLUMNS}) VALUES ({marks(NEW_INBOX_COLUMNS)}) "
            "ON CONFLICT (platform, event_key) DO NOTHING RETURNING id",
            *inbox_values(message, time.time()),
        )
        return InboxEntry(int(entry_id), message, State.RECEIVED) if entry_id is not None else None

    async def start(self, entry_id: int, *, claim: Claim | None = None) -> int:
        """Mark the message as being answered and count the attempt; returns the attempts so far."""
        async with self.db.transaction() as conn:
            await fence(conn, claim)
            attempts = await conn.fetchval(
                "UPDATE inbox SET state = 'processing', attempts = attempts + 1, updated_at = $1 WHERE id = $2 "
                "RETURNING attempts",
                time.time(),
                entry_id,
            )
        return int(attempts or 0)

    async def answer(
        self, entry_id: int, reply: Reply, *, error: str | None = None, claim: Claim | None = None
    ) -> None:
        """Store the reply and mark the message answered; `error` says what went wrong when the reply is an
        apology (the reply's error id is stored with it). Either way the reply is delivered, after a restart too.
        """
        async with self.db.transaction() as conn:
            await fence(conn, claim)
            await answer_in(conn, entry_id, reply, error)

    async def fail(self, entry_id: int, error_id: str, error: str, *, claim: Claim | None = None) -> None:
        """The reply could not be delivered: give up on it for good, a restart will not try it again."""
        await self._fenced(
            claim,
            "UPDATE inbox SET state = 'failed', error_id = $1, error = $2, updated_at = $3 WHERE id = $4",
            error_id,
            error,
            time.time(),
            entry_id,
        )

    async def delivered(self, entry_id: int, *, claim: Claim | None = None) -> None:
        """The platform took the reply: a restart must not send it again."""
        await self._fenced(
            claim, "UPDATE inbox SET delivered_at = $1, updated_at = $1 WHERE id = $2", time.time(), entry_id
        )

    async def streaming(self, entry_id: int, ref: str, *, claim: Claim | None = None) -> None:
        """The reply is being streamed into the platform message `ref`: a restart finishes that message."""
        await self._fenced(
            claim, "UPDATE inbox SET stream = $1, updated_at = $2 WHERE id = $3", ref, time.time(), entry_id
        )

    async def _fenced(self, claim: Claim | None, sql: str, *args: object) -> None:
        """One statement, in a transaction with the claim's fence when there is a claim."""
        if claim is None:
            await self.db.execute(sql, *args)
            return
        async with self.db.transaction() as conn:
            await fence(conn, claim)
            await conn.execute(sql, *args)

    async def unfinished_of(self, conversation: str) -> list[InboxEntry]:
        rows = await self.db.fetch(
            f"SELECT {INBOX_COLUMNS} FROM inbox "
            "WHERE conversation = $1 AND delivered_at IS NULL AND state <> 'failed' ORDER BY id",
            conversation,
        )
        return [inbox_entry(row) for row in rows]

    async def unfinished(self, platforms: Iterable[str]) -> list[InboxEntry]:
        """Messages of these platforms still to answer or whose reply is still to deliver, in arrival order."""
        names = list(platforms)
        if not names:
            return []
        rows = await self.db.fetch(
            f"SELECT {INBOX_COLUMNS} FROM inbox WHERE delivered_at IS NULL AND state <> 'failed' "
            "AND platform = ANY($1::text[]) ORDER BY id",
            names,
        )
        return [inbox_entry(row) for row in rows]

    async def recent(self, limit: int = 100) -> list[InboxEntry]:
        """The newest `limit` messages, whatever their state, oldest first."""
        rows = await self.db.fetch(f"SELECT {INBOX_COLUMNS} FROM inbox ORDER BY id DESC LIMIT $1", limit)
        return [inbox_entry(row) for row in reversed(rows)]

    async def get(self, entry_id: int) -> InboxEntry | None:
        row = await self.db.fetchrow(f"SELECT {INBOX_COLUMNS} FROM inbox WHERE id = $1", entry_id)
        return inbox_entry(row) if row else None
