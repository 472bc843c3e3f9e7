"""Per-channel memory: conversation turns, facts (FTS5, BM25), working memory and reasoning chains.

This module, `agent.store`, `agent.inbox` and `agent.tools.executions` are the only places that speak SQL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

from agent.messages import Conversation, Step
from agent.store import Store

# Extra writes that must land in the same transaction as an exchange: (connection, chain id).
Also = Callable[[sqlite3.Connection, int], None]

# Words so common that matching them says nothing about relevance; dropped from fact queries.
STOPWORDS = frozenset(
    [
        "a",
        "about",
        "after",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "before",
        "being",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "for",
        "from",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "just",
        "me",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "please",
        "tell",
        "know",
        "remember",
    ]
)
WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_QUERY_TERMS = 16
KEEP_ACCESSED_MORE_THAN = 10
EXPORT_VERSION = 1


@dataclass(frozen=True)
class Turn:
    role: str
    text: str
    user_id: str
    created_at: float
    thread: str = ""


@dataclass(frozen=True)
class Fact:
    key: str
    value: str
    confidence: float
    access_count: int
    created_at: float
    updated_at: float
    last_access: float


@dataclass(frozen=True)
class ChainRecord:
    """A reasoning chain as it is stored: the question, the answer and every step between."""

    question: str
    answer: str
    status: str
    model: str
    started_at: float
    duration_ms: float
    steps: tuple[Step, ...] = ()
    user_id: str = ""
    error_id: str | None = None
    run_id: str = ""
    mode: str = "react"
    model_calls: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class ChainStats:
    """Aggregates over reasoning chains, for `parley chains stats`."""

    chains: int
    by_status: dict[str, int]
    mean_steps: float
    mean_duration_ms: float
    model_calls: int
    input_tokens: int
    output_tokens: int
    tool_usage: dict[str, int]


def scope_token(channel: str) -> str:
    """A fixed-length prefix that stands for a channel: hex of a hash, so no user word can forge it."""
    return "ch" + hashlib.blake2b(channel.encode(), digest_size=10).hexdigest()


def words(text: str) -> list[str]:
    """The words of `text` worth indexing or matching: lower-cased, letters and digits, common words dropped."""
    return [w for w in WORD.findall(text.lower()) if w not in STOPWORDS and (len(w) > 1 or w.isdigit())]


def query_terms(text: str) -> list[str]:
    """The distinct words of a query, in order, at most MAX_QUERY_TERMS."""
    return list(dict.fromkeys(words(text)))[:MAX_QUERY_TERMS]


def channel_terms(channel: str, text: str) -> str:
    """What the FTS index stores for `text`: every word glued to the channel's prefix (one token each)."""
    scope = scope_token(channel)
    return " ".join(scope + w for w in words(text))


def match_expression(channel: str, text: str) -> str | None:
    """An FTS5 MATCH string of the channel's terms, each quoted; None when nothing is worth matching."""
    scope = scope_token(channel)
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join('"' + (scope + term).replace('"', '""') + '"' for term in terms)


STEP_COLUMNS = (
    "thought",
    "tool",
    "args",
    "observation",
    "kind",
    "outcome",
    "part",
    "model_ms",
    "tool_ms",
    "input_tokens",
    "output_tokens",
)


def _step_row(step: Step) -> tuple[object, ...]:
    row = asdict(step)
    row["args"] = json.dumps(step.args, default=str, ensure_ascii=False)
    return tuple(row[c] for c in STEP_COLUMNS)


class Memory:
    """The memory API of one store. Every method is scoped to a channel; none sees another channel's rows."""

    def __init__(self, store: Store, *, max_turns: int = 100) -> None:
        self.store = store
        self.max_turns = max_turns

    # Turns -----------------------------------------------------------------------------------------

    async def add_turn(
        self, conv: Conversation, role: str, text: str, *, user_id: str = "", chain_id: int | None = None
    ) -> None:
        now = time.time()
        await self.store.write(lambda db: self._insert_turn(db, conv, role, text, user_id, chain_id, now))

    def _insert_turn(
        self,
        db: sqlite3.Connection,
        conv: Conversation,
        role: str,
        text: str,
        user_id: str,
        chain_id: int | None,
        now: float,
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
            (conv.channel, conv.channel, self.max_turns),
        )

    async def recent_turns(self, conv: Conversation, limit: int = 10) -> list[Turn]:
        """The last `limit` turns of the conversation (its thread, or the channel's top level), oldest first."""
        rows = await self.store.fetchall(
            "SELECT t.role, t.text, t.user_id, t.created_at, c.thread FROM turns t "
            "JOIN conversations c ON c.id = t.conversation_id "
            "WHERE c.channel = ? AND c.thread = ? ORDER BY t.id DESC LIMIT ?",
            (conv.channel, conv.thread, limit),
        )
        return [Turn(r[0], r[1], r[2], r[3], r[4]) for r in reversed(rows)]

    async def channel_turns(self, channel: str, limit: int = 100) -> list[Turn]:
        """The last `limit` turns of the whole channel, every thread included, oldest first."""
        rows = await self.store.fetchall(
            "SELECT t.role, t.text, t.user_id, t.created_at, c.thread FROM turns t "
            "JOIN conversations c ON c.id = t.conversation_id "
            "WHERE t.channel = ? ORDER BY t.id DESC LIMIT ?",
            (channel, limit),
        )
        return [Turn(r[0], r[1], r[2], r[3], r[4]) for r in reversed(rows)]

    # Facts -----------------------------------------------------------------------------------------

    async def add_fact(self, channel: str, key: str, value: str, *, confidence: float = 1.0) -> None:
        """Upsert: a known key gets the new value and confidence, and counts as one more access."""
        now = time.time()
        fact = Fact(key.strip(), value.strip(), confidence, 0, now, now, now)
        await self.store.write(lambda db: _upsert_fact(db, channel, fact))

    async def get_fact(self, channel: str, key: str) -> Fact | None:
        """One fact by key; reading it touches its last access and access count."""
        now = time.time()
        row = await self.store.write(
            lambda db: db.execute(
                "UPDATE facts SET last_access = ?, access_count = access_count + 1 "
                "WHERE channel = ? AND key = ? "
                "RETURNING key, value, confidence, access_count, created_at, updated_at, last_access",
                (now, channel, key.strip()),
            ).fetchone()
        )
        return Fact(*row) if row else None

    async def facts(self, channel: str) -> list[Fact]:
        rows = await self.store.fetchall(
            "SELECT key, value, confidence, access_count, created_at, updated_at, last_access "
            "FROM facts WHERE channel = ? ORDER BY key",
            (channel,),
        )
        return [Fact(*r) for r in rows]

    async def relevant_facts(self, channel: str, query: str, k: int = 5, *, touch: bool = False) -> list[Fact]:
        """The top-k facts of the channel for `query` by BM25 (key weighs twice the value)."""
        expression = match_expression(channel, query)
        if expression is None or k <= 0:
            return []
        rows = await self.store.fetchall(
            "SELECT f.id, f.key, f.value, f.confidence, f.access_count, f.created_at, f.updated_at, "
            "f.last_access FROM facts_fts JOIN facts f ON f.id = facts_fts.rowid "
            "WHERE facts_fts MATCH ? ORDER BY bm25(facts_fts, 2.0, 1.0) LIMIT ?",
            (expression, k),
        )
        if touch and rows:
            touched = (time.time(), *(r[0] for r in rows))
            await self.store.write(
                lambda db: db.execute(
                    f"UPDATE facts SET last_access = ?, access_count = access_count + 1 "
                    f"WHERE id IN ({','.join('?' * len(rows))})",
                    touched,
                )
            )
        return [Fact(*r[1:]) for r in rows]

    async def prune_old_facts(self, max_age_days: float, *, now: float | None = None) -> int:
        """Delete facts untouched for `max_age_days`, except those accessed more than 10 times."""
        cutoff = (time.time() if now is None else now) - max_age_days * 86400
        cursor = await self.store.write(
            lambda db: db.execute(
                "DELETE FROM facts WHERE last_access < ? AND access_count <= ?", (cutoff, KEEP_ACCESSED_MORE_THAN)
            )
        )
        return cursor.rowcount

    # Working memory --------------------------------------------------------------------------------

    async def set_working(self, conv: Conversation, key: str, value: str) -> None:
        now = time.time()
        await self.store.write(
            lambda db: db.execute(
                "INSERT INTO working_memory (channel, thread, key, value, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (channel, thread, key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (conv.channel, conv.thread, key, value, now),
            )
        )

    async def working(self, conv: Conversation) -> dict[str, str]:
        rows = await self.store.fetchall(
            "SELECT key, value FROM working_memory WHERE channel = ? AND thread = ? ORDER BY key",
            (conv.channel, conv.thread),
        )
        return {r[0]: r[1] for r in rows}

    # Context for the prompt ------------------------------------------------------------------------

    async def context_text(self, conv: Conversation, query: str, *, turns: int = 8, k: int = 5) -> str:
        """What the model is told about this conversation: recent turns, notes, then relevant facts."""
        # Queued together, the three reads run back to back on the reader thread.
        facts, notes, recent = await asyncio.gather(
            self.relevant_facts(conv.channel, query, k, touch=True), self.working(conv), self.recent_turns(conv, turns)
        )
        parts = []
        if recent:
            parts.append("Recent conversation:\n" + "\n".join(f"{t.role}: {t.text}" for t in recent))
        if notes:
            parts.append("Notes:\n" + "\n".join(f"- {k}: {v}" for k, v in notes.items()))
        if facts:
            # Last, nearest the question: small models weigh what they read last.
            parts.append("Known facts:\n" + "\n".join(f"- {f.key}: {f.value}" for f in facts))
        return "\n\n".join(parts) if parts else "(nothing remembered yet)"

    # Reasoning chains ------------------------------------------------------------------------------

    async def record_exchange(
        self, conv: Conversation, chain: ChainRecord, *, reply_text: str, also: Also | None = None
    ) -> int:
        """Store the user's turn, the reasoning chain and the reply in one transaction; returns the chain id.

        `also(db, chain_id)` runs inside the same transaction: the dispatcher marks the inbox row answered there.
        """
        now = time.time()

        def write(db: sqlite3.Connection) -> int:
            row = db.execute(
                "INSERT INTO chains (channel, thread, user_id, question, answer, status, model, error_id, "
                "started_at, duration_ms, run_id, mode, model_calls, input_tokens, output_tokens) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    conv.channel,
                    conv.thread,
                    chain.user_id,
                    chain.question,
                    chain.answer,
                    chain.status,
                    chain.model,
                    chain.error_id,
                    chain.started_at,
                    chain.duration_ms,
                    chain.run_id,
                    chain.mode,
                    chain.model_calls,
                    chain.input_tokens,
                    chain.output_tokens,
                ),
            ).fetchone()
            chain_id = int(row[0])
            db.executemany(
                f"INSERT INTO chain_steps (chain_id, idx, {', '.join(STEP_COLUMNS)}) "
                f"VALUES (?, ?, {', '.join('?' * len(STEP_COLUMNS))})",
                [(chain_id, i, *_step_row(s)) for i, s in enumerate(chain.steps)],
            )
            self._insert_turn(db, conv, "user", chain.question, chain.user_id, chain_id, now)
            self._insert_turn(db, conv, "assistant", reply_text, "", chain_id, now)
            if also is not None:
                also(db, chain_id)
            return chain_id

        return await self.store.write(write)

    async def chain_steps(self, chain_id: int) -> list[Step]:
        rows = await self.store.fetchall(
            f"SELECT {', '.join(STEP_COLUMNS)} FROM chain_steps WHERE chain_id = ? ORDER BY idx",
            (chain_id,),
        )
        return [Step(**{**dict(r), "args": json.loads(r["args"])}) for r in rows]

    async def count_chains(self, started_at: float = 0.0, channel: str | None = None) -> int:
        row = await self.store.fetchone(
            "SELECT COUNT(*) FROM chains WHERE started_at >= ? AND (? IS NULL OR channel = ?)",
            (started_at, channel, channel),
        )
        return int(row[0]) if row else 0

    async def chains_since(
        self, started_at: float, *, channel: str | None = None, batch: int = 500, after_id: int = 0
    ) -> AsyncIterator[dict[str, Any]]:
        """Every chain started at or after `started_at` (of one channel, or all) with an id above `after_id`,
        oldest first, with its steps."""
        last_id = after_id
        while True:
            rows = await self.store.fetchall(
                "SELECT id, channel, thread, user_id, question, answer, status, model, error_id, started_at, "
                "duration_ms, run_id, mode, model_calls, input_tokens, output_tokens FROM chains "
                "WHERE started_at >= ? AND (? IS NULL OR channel = ?) AND id > ? ORDER BY id LIMIT ?",
                (started_at, channel, channel, last_id, batch),
            )
            for row in rows:
                chain = dict(row)
                chain["steps"] = [asdict(s) for s in await self.chain_steps(row["id"])]
                yield chain
            if len(rows) < batch:
                return
            last_id = rows[-1]["id"]

    async def chain_stats(self, started_at: float = 0.0, channel: str | None = None) -> ChainStats:
        """Counts, mean steps and duration, model usage and tool usage of the chains in range."""
        scope = "started_at >= ? AND (? IS NULL OR channel = ?)"
        params = (started_at, channel, channel)
        totals = await self.store.fetchone(
            "SELECT COUNT(*), COALESCE(AVG(duration_ms), 0), COALESCE(SUM(model_calls), 0), "
            f"COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM chains WHERE {scope}",
            params,
        )
        assert totals is not None
        statuses = await self.store.fetchall(
            f"SELECT status, COUNT(*) FROM chains WHERE {scope} GROUP BY status ORDER BY 2 DESC", params
        )
        steps = await self.store.fetchone(
            "SELECT COUNT(*) FROM chain_steps WHERE kind != 'conclusion' AND chain_id IN "
            f"(SELECT id FROM chains WHERE {scope})",
            params,
        )
        tools = await self.store.fetchall(
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

    # Whole channel ---------------------------------------------------------------------------------

    async def forget(self, channel: str) -> dict[str, int]:
        """Delete everything remembered about a channel: turns, facts, notes and reasoning chains."""

        def delete(db: sqlite3.Connection) -> dict[str, int]:
            tables = ("turns", "facts", "working_memory", "chains", "tool_executions", "conversations")
            return {t: db.execute(f"DELETE FROM {t} WHERE channel = ?", (channel,)).rowcount for t in tables}

        return await self.store.write(delete)

    async def export_channel(self, channel: str) -> dict[str, Any]:
        """A channel's memory as JSON-ready data, for backup or moving it elsewhere."""
        turns = await self.channel_turns(channel, limit=self.max_turns)
        notes = await self.store.fetchall(
            "SELECT thread, key, value, updated_at FROM working_memory WHERE channel = ? ORDER BY thread, key",
            (channel,),
        )
        return {
            "version": EXPORT_VERSION,
            "channel": channel,
            "facts": [asdict(f) for f in await self.facts(channel)],
            "turns": [asdict(t) for t in turns],
            "working_memory": [dict(zip(("thread", "key", "value", "updated_at"), n, strict=True)) for n in notes],
        }

    async def import_channel(self, data: dict[str, Any], channel: str | None = None) -> None:
        """Load an export into `channel` (default: the exported one); facts upsert, turns append."""
        if data.get("version") != EXPORT_VERSION:
            raise ValueError(f"unsupported memory export version {data.get('version')!r}")
        target = channel or str(data["channel"])

        def load(db: sqlite3.Connection) -> None:
            for f in data.get("facts", []):
                _upsert_fact(db, target, Fact(**f), keep_access_count=True)
            for t in data.get("turns", []):
                conv = Conversation(target, t.get("thread", ""))
                self._insert_turn(db, conv, t["role"], t["text"], t["user_id"], None, t["created_at"])
            for n in data.get("working_memory", []):
                db.execute(
                    "INSERT OR REPLACE INTO working_memory (channel, thread, key, value, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (target, n["thread"], n["key"], n["value"], n["updated_at"]),
                )

        await self.store.write(load)


def _upsert_fact(db: sqlite3.Connection, channel: str, fact: Fact, *, keep_access_count: bool = False) -> None:
    """Insert a fact or update the channel's fact of that key, keeping its index terms in step.

    On conflict the access count is the given one (an import) or one more than before (a new statement).
    """
    access = "excluded.access_count" if keep_access_count else "access_count + 1"
    db.execute(
        "INSERT INTO facts (channel, key, value, confidence, access_count, created_at, updated_at, last_access, "
        "key_terms, value_terms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
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
