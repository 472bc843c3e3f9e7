"""The durable inbox on SQLite: every incoming message, its state and its reply.

A message is stored before the platform is acknowledged, so a crash never loses it; the unique key on
(platform, event key) makes a redelivery a no-op. The reply is stored with the `answered` state in the same
transaction as the turn and the reasoning chain, and `delivered_at` is set once the platform took it, so a
restart re-answers only unanswered messages and re-delivers only undelivered replies.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable

from agent.messages import IncomingMessage, Reply
from agent.storage.models import Claim, InboxEntry, State
from agent.storage.rows import INBOX_COLUMNS, NEW_INBOX_COLUMNS, inbox_entry, inbox_values, reply_json
from agent.storage.sqlite.database import Database, marks
from agent.storage.sqlite.replicas import SqliteClaims


def answer_in(db: sqlite3.Connection, entry_id: int, reply: Reply, error: str | None = None) -> None:
    """Store the reply and mark the message answered, inside the caller's transaction (the exchange's)."""
    db.execute(
        "UPDATE inbox SET state = 'answered', reply = ?, error_id = ?, error = ?, updated_at = ? WHERE id = ?",
        (reply_json(reply), reply.error_id, error, time.time(), entry_id),
    )


class SqliteInbox:
    """The inbox table. Every method is one short transaction; writes under a claim are fenced by it."""

    def __init__(self, db: Database, claims: SqliteClaims) -> None:
        self.db = db
        self.claims = claims

    async def accept(self, message: IncomingMessage) -> InboxEntry | None:
        """Store a new message; None when this platform event is already in the inbox (a redelivery)."""
        params = inbox_values(message, time.time())
        row = await self.db.write(
            lambda db: db.execute(
                f"INSERT INTO inbox ({NEW_INBOX_COLUMNS}) VALUES ({marks(NEW_INBOX_COLUMNS)}) "
                "ON CONFLICT (platform, event_key) DO NOTHING RETURNING id",
                params,
            ).fetchone()
        )
        return InboxEntry(int(row[0]), message, State.RECEIVED) if row else None

    async def start(self, entry_id: int, *, claim: Claim | None = None) -> int:
        """Mark the message as being answered and count the attempt; returns the attempts so far."""
        self.claims.fence(claim)
        now = time.time()
        row = await self.db.write(
            lambda db: db.execute(
                "UPDATE inbox SET state = 'processing', attempts = attempts + 1, updated_at = ? WHERE id = ? "
                "RETURNING attempts",
                (now, entry_id),
            ).fetchone()
        )
        return int(row[0]) if row else 0

    async def answer(
        self, entry_id: int, reply: Reply, *, error: str | None = None, claim: Claim | None = None
    ) -> None:
        """Store the reply and mark the message answered; `error` says what went wrong when the reply is an
        apology (the reply's error id is stored with it). Either way the reply is delivered, after a restart too.
        """
        self.claims.fence(claim)
        await self.db.write(lambda db: answer_in(db, entry_id, reply, error))

    async def fail(self, entry_id: int, error_id: str, error: str, *, claim: Claim | None = None) -> None:
        """The reply could not be delivered: give up on it for good, a restart will not try it again."""
        self.claims.fence(claim)
        params = (error_id, error, time.time(), entry_id)
        await self.db.write(
            lambda db: db.execute(
                "UPDATE inbox SET state = 'failed', error_id = ?, error = ?, updated_at = ? WHERE id = ?", params
            )
        )

    async def delivered(self, entry_id: int, *, claim: Claim | None = None) -> None:
        """The platform took the reply: a restart must not send it again."""
        self.claims.fence(claim)
        now = time.time()
        await self.db.write(
            lambda db: db.execute(
                "UPDATE inbox SET delivered_at = ?, updated_at = ? WHERE id = ?", (now, now, entry_id)
            )
        )

    async def streaming(self, entry_id: int, ref: str, *, claim: Claim | None = None) -> None:
        """The reply is being streamed into the platform message `ref`: a restart finishes that message."""
        self.claims.fence(claim)
        params = (ref, time.time(), entry_id)
        await self.db.write(lambda db: db.execute("UPDATE inbox SET stream = ?, updated_at = ? WHERE id = ?", params))

    async def unfinished(self, platforms: Iterable[str]) -> list[InboxEntry]:
        """Messages of these platforms still to answer or whose reply is still to deliver, in arrival order."""
        names = list(platforms)
        if not names:
            return []
        rows = await self.db.fetchall(
            f"SELECT {INBOX_COLUMNS} FROM inbox "
            f"WHERE delivered_at IS NULL AND state != 'failed' AND platform IN ({', '.join('?' * len(names))}) "
            "ORDER BY id",
            names,
        )
        return [inbox_entry(row) for row in rows]

    async def unfinished_of(self, conversation: str) -> list[InboxEntry]:
        rows = await self.db.fetchall(
            f"SELECT {INBOX_COLUMNS} FROM inbox "
            "WHERE conversation = ? AND delivered_at IS NULL AND state != 'failed' ORDER BY id",
            (conversation,),
        )
        return [inbox_entry(row) for row in rows]

    async def recent(self, limit: int = 100) -> list[InboxEntry]:
        rows = await self.db.fetchall(f"SELECT {INBOX_COLUMNS} FROM inbox ORDER BY id DESC LIMIT ?", (limit,))
        return [inbox_entry(row) for row in reversed(rows)]

    async def get(self, entry_id: int) -> InboxEntry | None:
        row = await self.db.fetchone(f"SELECT {INBOX_COLUMNS} FROM inbox WHERE id = ?", (entry_id,))
        return inbox_entry(row) if row else None
