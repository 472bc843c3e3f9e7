"""The durable inbox: every incoming message, its state and its reply, in SQLite.

A message is stored before the platform is acknowledged, so a crash never loses it; the unique key on
(platform, event key) makes a redelivery a no-op. The reply is stored with the `answered` state in the same
transaction as the turn and the reasoning chain, and `delivered_at` is set once the platform took it, so a
restart re-answers only unanswered messages and re-delivers only undelivered replies.

States: `received` (stored), `processing` (being answered; `attempts` counts tries), `answered` (a reply is
stored, an apology with its error id included), `failed` (the reply could not be delivered; given up).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum

from agent.messages import IncomingMessage, Reply
from agent.store import Store


class State(StrEnum):
    RECEIVED = "received"
    PROCESSING = "processing"
    ANSWERED = "answered"
    FAILED = "failed"


@dataclass(frozen=True)
class InboxEntry:
    id: int
    message: IncomingMessage
    state: State
    attempts: int = 0
    reply: Reply | None = None

    @property
    def delivery_key(self) -> str:
        """Stable across attempts and restarts, and short enough for Discord's 25-character nonce."""
        return f"parley-{self.id}"


def event_key(message: IncomingMessage) -> str:
    """What makes a delivery of this message the same as another: the platform's event id, else its message id.

    A message with neither (a malformed event) is keyed by a hash of where it was said, by whom and what: a
    redelivery of it is still dropped, and so is the same text from the same person in the same place until the
    inbox row is pruned, which only a message without ids can suffer.
    """
    key = message.event_id or message.message_id
    if key:
        return key
    said = json.dumps([message.workspace, message.channel, message.thread, message.user, message.text])
    return "content:" + hashlib.sha256(said.encode()).hexdigest()[:32]


def conversation_key(message: IncomingMessage) -> str:
    """Messages with the same key are answered one at a time, in arrival order."""
    conv = message.conversation
    return f"{message.platform}|{conv.channel}|{conv.thread}"


def _reply_json(reply: Reply) -> str:
    return json.dumps(
        {"text": reply.text, "status": reply.status, "error_id": reply.error_id, "chain_id": reply.chain_id}
    )


def answer_in(db: sqlite3.Connection, entry_id: int, reply: Reply, error: str | None = None) -> None:
    """Store the reply and mark the message answered, inside the caller's transaction (the exchange's)."""
    db.execute(
        "UPDATE inbox SET state = 'answered', reply = ?, error_id = ?, error = ?, updated_at = ? WHERE id = ?",
        (_reply_json(reply), reply.error_id, error, time.time(), entry_id),
    )


def _entry(row: sqlite3.Row) -> InboxEntry:
    reply = Reply(**json.loads(row["reply"])) if row["reply"] else None
    return InboxEntry(
        id=row["id"],
        message=IncomingMessage(**json.loads(row["message"])),
        state=State(row["state"]),
        attempts=row["attempts"],
        reply=reply,
    )


class Inbox:
    """The inbox table. Every method is one short transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def accept(self, message: IncomingMessage) -> InboxEntry | None:
        """Store a new message; None when this platform event is already in the inbox (a redelivery)."""
        params = (
            message.platform,
            event_key(message),
            conversation_key(message),
            message.user,
            json.dumps(asdict(message)),
            message.received_at,
            time.time(),
        )
        row = await self.store.write(
            lambda db: db.execute(
                "INSERT INTO inbox (platform, event_key, conversation, user_id, message, received_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (platform, event_key) DO NOTHING RETURNING id",
                params,
            ).fetchone()
        )
        return InboxEntry(int(row[0]), message, State.RECEIVED) if row else None

    async def start(self, entry_id: int) -> None:
        """Mark the message as being answered and count the attempt."""
        now = time.time()
        await self.store.write(
            lambda db: db.execute(
                "UPDATE inbox SET state = 'processing', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (now, entry_id),
            )
        )

    async def answer(self, entry_id: int, reply: Reply, *, error: str | None = None) -> None:
        """Store the reply and mark the message answered; `error` says what went wrong when the reply is an
        apology (the reply's error id is stored with it). Either way the reply is delivered, after a restart too.
        """
        await self.store.write(lambda db: answer_in(db, entry_id, reply, error))

    async def fail(self, entry_id: int, error_id: str, error: str) -> None:
        """The reply could not be delivered: give up on it for good, a restart will not try it again."""
        params = (error_id, error, time.time(), entry_id)
        await self.store.write(
            lambda db: db.execute(
                "UPDATE inbox SET state = 'failed', error_id = ?, error = ?, updated_at = ? WHERE id = ?", params
            )
        )

    async def delivered(self, entry_id: int) -> None:
        """The platform took the reply: a restart must not send it again."""
        now = time.time()
        await self.store.write(
            lambda db: db.execute(
                "UPDATE inbox SET delivered_at = ?, updated_at = ? WHERE id = ?", (now, now, entry_id)
            )
        )

    async def unfinished(self, platforms: Iterable[str]) -> list[InboxEntry]:
        """Messages of these platforms still to answer or whose reply is still to deliver, in arrival order."""
        names = list(platforms)
        if not names:
            return []
        rows = await self.store.fetchall(
            "SELECT id, message, state, attempts, reply FROM inbox "
            f"WHERE delivered_at IS NULL AND state != 'failed' AND platform IN ({', '.join('?' * len(names))}) "
            "ORDER BY id",
            names,
        )
        return [_entry(row) for row in rows]

    async def get(self, entry_id: int) -> InboxEntry | None:
        row = await self.store.fetchone(
            "SELECT id, message, state, attempts, reply FROM inbox WHERE id = ?", (entry_id,)
        )
        return _entry(row) if row else None
