"""`SqliteStorage`: the repositories of one SQLite file and the operations that span them in one transaction."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from agent.messages import Conversation, Reply
from agent.storage.base import (
    Approvals,
    Chains,
    ChannelSettings,
    Claims,
    Executions,
    Facts,
    Inbox,
    Jobs,
    Limits,
    Notes,
    Replicas,
    Stats,
    Turns,
    Usage,
)
from agent.storage.leadership import Leadership
from agent.storage.models import (
    EXPORT_VERSION,
    TABLES,
    ChainRecord,
    Claim,
    Fact,
    PrunePolicy,
    StorageStatus,
)
from agent.storage.rows import answer_usage
from agent.storage.sqlite.approvals import SqliteApprovals
from agent.storage.sqlite.channel_settings import SqliteChannelSettings
from agent.storage.sqlite.database import Database
from agent.storage.sqlite.executions import SqliteExecutions
from agent.storage.sqlite.inbox import SqliteInbox, answer_in
from agent.storage.sqlite.jobs import SqliteJobs, SqliteStats
from agent.storage.sqlite.leadership import SoleLeadership
from agent.storage.sqlite.memory import (
    SqliteChains,
    SqliteFacts,
    SqliteNotes,
    SqliteTurns,
    insert_chain,
    insert_turn,
    prune_facts,
    upsert_fact,
)
from agent.storage.sqlite.migrations import LATEST_VERSION
from agent.storage.sqlite.replicas import SqliteClaims, SqliteLimits, SqliteReplicas
from agent.storage.sqlite.usage import SqliteUsage, insert_usage

DAY = 86400.0


class SqliteStorage:
    engine = "sqlite"

    def __init__(self, db: Database, *, max_turns: int = 100) -> None:
        self.db = db
        self.max_turns = max_turns
        self.turns: Turns = SqliteTurns(db, max_turns)
        self.notes: Notes = SqliteNotes(db)
        self.facts: Facts = SqliteFacts(db)
        self.chains: Chains = SqliteChains(db)
        self.replicas: Replicas = SqliteReplicas()
        self._claims = SqliteClaims(db)
        self.claims: Claims = self._claims
        self.limits: Limits = SqliteLimits()
        self.leadership: Leadership = SoleLeadership()
        self.inbox: Inbox = SqliteInbox(db, self._claims)
        self.executions: Executions = SqliteExecutions(db)
        self.approvals: Approvals = SqliteApprovals(db)
        self.jobs: Jobs = SqliteJobs(db)
        self.stats: Stats = SqliteStats(db)
        self.channel_settings: ChannelSettings = SqliteChannelSettings(db)
        self.usage: Usage = SqliteUsage(db)

    @classmethod
    async def open(
        cls, path: Path | str, *, busy_timeout_ms: int = 5000, max_turns: int = 100, migrate: bool = True
    ) -> SqliteStorage:
        db = await Database.open(path, busy_timeout_ms=busy_timeout_ms, migrate_to=LATEST_VERSION if migrate else None)
        return cls(db, max_turns=max_turns)

    @property
    def location(self) -> str:
        return str(self.db.path)

    async def record_exchange(
        self,
        conv: Conversation,
        chain: ChainRecord | None,
        reply: Reply,
        *,
        inbox_id: int | None = None,
        error: str | None = None,
        claim: Claim | None = None,
    ) -> Reply:
        self._claims.fence(claim)
        now = time.time()

        def write(db: sqlite3.Connection) -> Reply:
            recorded = reply
            if chain is not None:
                chain_id = insert_chain(db, conv, chain)
                insert_turn(db, conv, "user", chain.question, chain.user_id, chain_id, now, self.max_turns)
                insert_turn(db, conv, "assistant", reply.text, "", chain_id, now, self.max_turns)
                if (usage := answer_usage(conv, chain, chain_id)) is not None:
                    insert_usage(db, usage)
                recorded = replace(reply, chain_id=chain_id)
            if inbox_id is not None:
                answer_in(db, inbox_id, recorded, error)
            return recorded

        return await self.db.write(write)

    async def prune(self, policy: PrunePolicy) -> dict[str, int]:
        p = policy

        def delete(db: sqlite3.Connection) -> dict[str, int]:
            # Unexported chains stay (when the export runs at all); so does the newest chain, whose id SQLite
            # would hand out again if it went, below the export's mark.
            kept_above: int | None = None
            if p.keep_unexported_of is not None:
                row = db.execute(
                    "SELECT value FROM job_state WHERE job = ? AND key = 'last_id'", (p.keep_unexported_of,)
                ).fetchone()
                kept_above = int(row[0]) if row else 0
            counts = {
                "facts": prune_facts(db, p.now - p.fact_max_age_days * DAY),
                "turns": db.execute("DELETE FROM turns WHERE created_at < ?", (p.turns_before,)).rowcount,
                "chains": db.execute(
                    "DELETE FROM chains WHERE started_at < ? AND (? IS NULL OR id <= ?) "
                    "AND id < (SELECT MAX(id) FROM chains)",
                    (p.chains_before, kept_above, kept_above),
                ).rowcount,
                "tool executions": db.execute(
                    "DELETE FROM tool_executions WHERE started_at < ?", (p.chains_before,)
                ).rowcount,
                # Finished rows; and terminal sessions' rows, which no later process delivers.
                "inbox rows": db.execute(
                    "DELETE FROM inbox WHERE updated_at < ? AND (delivered_at IS NOT NULL OR state = 'failed' "
                    "OR platform = 'console')",
                    (p.inbox_before,),
                ).rowcount,
                "job runs": db.execute(
                    "DELETE FROM job_runs WHERE started_at < ? AND state != 'running'", (p.job_runs_before,)
                ).rowcount,
            }
            db.execute(
                "DELETE FROM conversations WHERE updated_at < ? AND id NOT IN (SELECT conversation_id FROM turns)",
                (p.turns_before,),
            )
            # The audit refuses deletes except below the cutoff written here, in this same transaction.
            db.execute("INSERT INTO audit_retention (before) VALUES (?)", (p.audit_before,))
            counts["audit rows"] = db.execute("DELETE FROM approval_audit WHERE at < ?", (p.audit_before,)).rowcount
            counts["setting changes"] = db.execute(
                "DELETE FROM setting_changes WHERE at < ?", (p.audit_before,)
            ).rowcount
            db.execute("DELETE FROM audit_retention")
            db.execute("DELETE FROM approvals WHERE state != 'pending' AND created_at < ?", (p.audit_before,))
            counts["usage rows"] = db.execute("DELETE FROM usage WHERE at < ?", (p.usage_before,)).rowcount
            return counts

        return await self.db.write(delete)

    async def forget(self, channel: str) -> dict[str, int]:
        def delete(db: sqlite3.Connection) -> dict[str, int]:
            tables = ("turns", "facts", "working_memory", "chains", "tool_executions", "conversations")
            return {t: db.execute(f"DELETE FROM {t} WHERE channel = ?", (channel,)).rowcount for t in tables}

        return await self.db.write(delete)

    async def export_channel(self, channel: str) -> dict[str, Any]:
        turns = await self.turns.of_channel(channel, limit=self.max_turns)
        notes = await self.db.fetchall(
            "SELECT thread, key, value, updated_at FROM working_memory WHERE channel = ? ORDER BY thread, key",
            (channel,),
        )
        return {
            "version": EXPORT_VERSION,
            "channel": channel,
            "facts": [asdict(f) for f in await self.facts.of_channel(channel)],
            "turns": [asdict(t) for t in turns],
            "working_memory": [dict(zip(("thread", "key", "value", "updated_at"), n, strict=True)) for n in notes],
        }

    async def import_channel(self, data: dict[str, Any], channel: str | None = None) -> None:
        if data.get("version") != EXPORT_VERSION:
            raise ValueError(f"unsupported memory export version {data.get('version')!r}")
        target = channel or str(data["channel"])

        def load(db: sqlite3.Connection) -> None:
            for f in data.get("facts", []):
                upsert_fact(db, target, Fact(**f), keep_access_count=True)
            for t in data.get("turns", []):
                conv = Conversation(target, t.get("thread", ""))
                insert_turn(db, conv, t["role"], t["text"], t["user_id"], None, t["created_at"], self.max_turns)
            for n in data.get("working_memory", []):
                db.execute(
                    "INSERT OR REPLACE INTO working_memory (channel, thread, key, value, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (target, n["thread"], n["key"], n["value"], n["updated_at"]),
                )

        await self.db.write(load)

    async def ping(self, *, now: float) -> None:
        await self.jobs.set_mark("readyz", "checked_at", str(now))

    async def status(self) -> StorageStatus:
        """Rows of the tables the schema has so far (an older file, opened without migrating, lacks some)."""
        present = {r[0] for r in await self.db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows = {}
        for table in (t for t in TABLES if t in present):
            row = await self.db.fetchone(f"SELECT COUNT(*) FROM {table}")
            rows[table] = int(row[0]) if row else 0
        return StorageStatus(self.engine, self.location, await self.db.version(), LATEST_VERSION, rows)

    async def rows(self, table: str, *, after: int, batch: int) -> list[dict[str, Any]]:
        """A batch of a table's rows in storage order (by rowid, after `after`), each with its `_rowid`:
        for `parley db copy`."""
        if table not in TABLES:
            raise ValueError(f"no table {table!r}")
        found = await self.db.fetchall(
            f"SELECT rowid AS _rowid, * FROM {table} WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, batch)
        )
        return [dict(r) for r in found]

    async def close(self) -> None:
        await self.db.close()
