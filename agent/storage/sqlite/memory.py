"""Memory on SQLite: conversation turns, working notes, facts (FTS5 with channel-folded terms, BM25) and chains.

Every method is scoped to a channel; none sees another channel's rows. The `insert_*` functions take the
writer's connection, so `SqliteStorage` can put them in one transaction with other writes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from agent.attachments.models import AttachmentRecord
from agent.messages import Conversation, Step
from agent.storage.models import KEEP_ACCESSED_MORE_THAN, ChainRecord, ChainStats, Fact, Turn
from agent.storage.rows import (
    ATTACHMENT_COLUMNS,
    CHAIN_COLUMNS,
    FACT_COLUMNS,
    STEP_COLUMNS,
    attachment_from,
    attachment_values,
    chain_values,
    step_from,
    step_values,
)
from agent.storage.sqlite.database import Database, marks
from agent.storage.terms import channel_terms, query_terms, scope_token


def match_expression(channel: str, terms: list[str]) -> str | None:
    """An FTS5 MATCH string of the channel's terms, each quoted; None when nothing is worth matching."""
    if not terms:
        return None
    scope = scope_token(channel)
    return " OR ".join('"' + (scope + term).replace('"', '""') + '"' for term in terms)


def insert_turn(
    db: sqlite3.Connection,
    conv: Conversation,
    role: str,
    text: str,
    user_id: str,
    chain_id: int | None,
    now: float,
    max_turns: int,
) -> None:
    row = db.execute(
        "INSERT INTO conversations (channel, thread, created_at, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (channel, thread) DO UPDATE SET updated_at = excluded.updated_at RETURNING id",
        (conv.channel, conv.thread, now, now),
    ).fetchone()
    assert row is not None
    db.execute(
        "INSERT INTO turns (conversation_id, channel, role, user_id, text, chain_id, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (row[0], conv.channel, role, user_id, text, chain_id, now),
    )
    # Bounded history: keep the newest `max_turns` of the channel.
    db.execute(
        "DELETE FROM turns WHERE channel = ? AND id <= "
        "(SELECT id FROM turns WHERE channel = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (conv.channel, conv.channel, max_turns),
    )


def insert_chain(db: sqlite3.Connection, conv: Conversation, chain: ChainRecord) -> int:
    row = db.execute(
        f"INSERT INTO chains ({CHAIN_COLUMNS}) VALUES ({marks(CHAIN_COLUMNS)}) RETURNING id",
        chain_values(conv, chain),
    ).fetchone()
    chain_id = int(row[0])
    db.executemany(
        f"INSERT INTO chain_steps (chain_id, idx, {', '.join(STEP_COLUMNS)}) "
        f"VALUES ({', '.join('?' * (len(STEP_COLUMNS) + 2))})",
        [step_values(chain_id, i, s) for i, s in enumerate(chain.steps)],
    )
    db.executemany(
        f"INSERT INTO chain_attachments (chain_id, idx, {', '.join(ATTACHMENT_COLUMNS)}) "
        f"VALUES ({', '.join('?' * (len(ATTACHMENT_COLUMNS) + 2))})",
        [attachment_values(chain_id, i, a) for i, a in enumerate(chain.attachments)],
    )
    return chain_id


def upsert_fact(db: sqlite3.Connection, channel: str, fact: Fact, *, keep_access_count: bool = False) -> None:
    """Insert a fact or update the channel's fact of that key, keeping its index terms in step.

    On conflict the access count is the given one (an import) or one more than before (a new statement).
    """
    access = "excluded.access_count" if keep_access_count else "access_count + 1"
    db.execute(
        f"INSERT INTO facts (channel, {FACT_COLUMNS}, key_terms, value_terms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (channel, key) DO UPDATE SET value = excluded.value, value_terms = excluded.value_terms, "
        f"confidence = excluded.confidence, access_count = {access}, updated_at = excluded.updated_at, "
        "last_access = excluded.last_access",
        (
            channel,
            fact.key,
            fact.value,
            fact.confidence,
            fact.access_count,
            fact.created_at,
            fact.updated_at,
            fact.last_access,
            channel_terms(channel, fact.key),
            channel_terms(channel, fact.value),
        ),
    )


class SqliteTurns:
    def __init__(self, db: Database, max_turns: int) -> None:
        self.db = db
        self.max_turns = max_turns

    async def add(
        self, conv: Conversation, role: str, text: str, *, user_id: str = "", chain_id: int | None = None
    ) -> None:
        now = time.time()
        await self.db.write(lambda db: insert_turn(db, conv, role, text, user_id, chain_id, now, self.max_turns))

    async def recent(self, conv: Conversation, limit: int = 10) -> list[Turn]:
        rows = await self.db.fetchall(
            "SELECT t.role, t.text, t.user_id, t.created_at, c.thread FROM turns t "
            "JOIN conversations c ON c.id = t.conversation_id "
            "WHERE c.channel = ? AND c.thread = ? ORDER BY t.id DESC LIMIT ?",
            (conv.channel, conv.thread, limit),
        )
        return [Turn(r[0], r[1], r[2], r[3], r[4]) for r in reversed(rows)]

    async def of_channel(self, channel: str, limit: int = 100) -> list[Turn]:
        rows = await self.db.fetchall(
            "SELECT t.role, t.text, t.user_id, t.created_at, c.thread FROM turns t "
            "JOIN conversations c ON c.id = t.conversation_id "
            "WHERE t.channel = ? ORDER BY t.id DESC LIMIT ?",
            (channel, limit),
        )
        return [Turn(r[0], r[1], r[2], r[3], r[4]) for r in reversed(rows)]


class SqliteNotes:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, conv: Conversation, key: str, value: str) -> None:
        now = time.time()
        await self.db.write(
            lambda db: db.execute(
                "INSERT INTO working_memory (channel, thread, key, value, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (channel, thread, key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (conv.channel, conv.thread, key, value, now),
            )
        )

    async def of(self, conv: Conversation) -> dict[str, str]:
        rows = await self.db.fetchall(
            "SELECT key, value FROM working_memory WHERE channel = ? AND thread = ? ORDER BY key",
            (conv.channel, conv.thread),
        )
        return {r[0]: r[1] for r in rows}


class SqliteFacts:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(self, channel: str, key: str, value: str, *, confidence: float = 1.0) -> None:
        now = time.time()
        fact = Fact(key.strip(), value.strip(), confidence, 0, now, now, now)
        await self.db.write(lambda db: upsert_fact(db, channel, fact))

    async def get(self, channel: str, key: str) -> Fact | None:
        now = time.time()
        row = await self.db.write(
            lambda db: db.execute(
                "UPDATE facts SET last_access = ?, access_count = access_count + 1 "
                f"WHERE channel = ? AND key = ? RETURNING {FACT_COLUMNS}",
                (now, channel, key.strip()),
            ).fetchone()
        )
        return Fact(*row) if row else None

    async def of_channel(self, channel: str) -> list[Fact]:
        rows = await self.db.fetchall(f"SELECT {FACT_COLUMNS} FROM facts WHERE channel = ? ORDER BY key", (channel,))
        return [Fact(*r) for r in rows]

    async def relevant(self, channel: str, query: str, k: int = 5, *, touch: bool = False) -> list[Fact]:
        """BM25 over the channel's folded terms; the key weighs twice the value."""
        expression = match_expression(channel, query_terms(query))
        if expression is None or k <= 0:
            return []
        rows = await self.db.fetchall(
            "SELECT f.id, f.key, f.value, f.confidence, f.access_count, f.created_at, f.updated_at, "
            "f.last_access FROM facts_fts JOIN facts f ON f.id = facts_fts.rowid "
            "WHERE facts_fts MATCH ? ORDER BY bm25(facts_fts, 2.0, 1.0) LIMIT ?",
            (expression, k),
        )
        if touch and rows:
            touched = (time.time(), *(r[0] for r in rows))
            await self.db.write(
                lambda db: db.execute(
                    f"UPDATE facts SET last_access = ?, access_count = access_count + 1 "
                    f"WHERE id IN ({','.join('?' * len(rows))})",
                    touched,
                )
            )
        return [Fact(*r[1:]) for r in rows]

    async def prune(self, max_age_days: float, *, now: float) -> int:
        cutoff = now - max_age_days * 86400
        return await self.db.write(lambda db: prune_facts(db, cutoff))


def prune_facts(db: sqlite3.Connection, cutoff: float) -> int:
    return db.execute(
        "DELETE FROM facts WHERE last_access < ? AND access_count <= ?", (cutoff, KEEP_ACCESSED_MORE_THAN)
    ).rowcount


class SqliteChains:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def steps(self, chain_id: int) -> list[Step]:
        rows = await self.db.fetchall(
            f"SELECT {', '.join(STEP_COLUMNS)} FROM chain_steps WHERE chain_id = ? ORDER BY idx", (chain_id,)
        )
        return [step_from(r) for r in rows]

    async def attachments(self, chain_id: int) -> list[AttachmentRecord]:
        rows = await self.db.fetchall(
            f"SELECT {', '.join(ATTACHMENT_COLUMNS)} FROM chain_attachments WHERE chain_id = ? ORDER BY idx",
            (chain_id,),
        )
        return [attachment_from(r) for r in rows]

    async def count(self, started_at: float = 0.0, channel: str | None = None) -> int:
        row = await self.db.fetchone(
            "SELECT COUNT(*) FROM chains WHERE started_at >= ? AND (? IS NULL OR channel = ?)",
            (started_at, channel, channel),
        )
        return int(row[0]) if row else 0

    async def since(
        self,
        started_at: float,
        *,
        channel: str | None = None,
        batch: int = 500,
        after_id: int = 0,
        ended_before: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        last_id = after_id
        while True:
            rows = await self.db.fetchall(
                f"SELECT id, {CHAIN_COLUMNS} FROM chains "
                "WHERE started_at >= ? AND (? IS NULL OR channel = ?) AND id > ? "
                "AND (? IS NULL OR started_at + duration_ms / 1000.0 < ?) ORDER BY id LIMIT ?",
                (started_at, channel, channel, last_id, ended_before, ended_before, batch),
            )
            for row in rows:
                chain = dict(row)
                chain["steps"] = [asdict(s) for s in await self.steps(row["id"])]
                chain["attachments"] = [asdict(a) for a in await self.attachments(row["id"])]
                yield chain
            if len(rows) < batch:
                return
            last_id = rows[-1]["id"]

    async def stats(self, started_at: float = 0.0, channel: str | None = None) -> ChainStats:
        scope = "started_at >= ? AND (? IS NULL OR channel = ?)"
        params = (started_at, channel, channel)
        totals = await self.db.fetchone(
            "SELECT COUNT(*), COALESCE(AVG(duration_ms), 0), COALESCE(SUM(model_calls), 0), "
            f"COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM chains WHERE {scope}",
            params,
        )
        assert totals is not None
        statuses = await self.db.fetchall(
            f"SELECT status, COUNT(*) FROM chains WHERE {scope} GROUP BY status ORDER BY 2 DESC", params
        )
        steps = await self.db.fetchone(
            "SELECT COUNT(*) FROM chain_steps WHERE kind != 'conclusion' AND chain_id IN "
            f"(SELECT id FROM chains WHERE {scope})",
            params,
        )
        tools = await self.db.fetchall(
            "SELECT tool, COUNT(*) FROM chain_steps WHERE kind = 'action' AND chain_id IN "
            f"(SELECT id FROM chains WHERE {scope}) GROUP BY tool ORDER BY 2 DESC, 1",
            params,
        )
        count = int(totals[0])
        return ChainStats(
            chains=count,
            by_status={r[0]: r[1] for r in statuses},
            mean_steps=(steps[0] if steps else 0) / count if count else 0.0,
            mean_duration_ms=float(totals[1]),
            model_calls=int(totals[2]),
            input_tokens=int(totals[3]),
            output_tokens=int(totals[4]),
            tool_usage={r[0]: r[1] for r in tools},
        )
