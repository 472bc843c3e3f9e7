"""`PostgresStorage`: the repositories of one PostgreSQL database and the operations that span them in one
transaction, plus the bulk loading `parley db copy` needs."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
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
from agent.storage.models import EXPORT_VERSION, TABLES, ChainRecord, Claim, Fact, PrunePolicy, StorageStatus
from agent.storage.postgres import bulk
from agent.storage.postgres.approvals import PostgresApprovals
from agent.storage.postgres.channel_settings import PostgresChannelSettings
from agent.storage.postgres.database import Database, affected
from agent.storage.postgres.executions import PostgresExecutions
from agent.storage.postgres.inbox import PostgresInbox, answer_in
from agent.storage.postgres.jobs import PostgresJobs, PostgresStats
from agent.storage.postgres.leadership import PostgresLeadership
from agent.storage.postgres.memory import (
    PostgresChains,
    PostgresFacts,
    PostgresNotes,
    PostgresTurns,
    insert_chain,
    insert_turn,
    prune_facts,
    upsert_fact,
)
from agent.storage.postgres.replicas import PostgresClaims, PostgresLimits, PostgresReplicas, fence, prune_counts
from agent.storage.postgres.schema import LATEST_VERSION
from agent.storage.postgres.usage import PostgresUsage, insert_usage
from agent.storage.rows import answer_usage

DAY = 86400.0
# What `forget` deletes of a channel, children before parents.
CHANNEL_TABLES = ("turns", "facts", "working_memory", "chains", "tool_executions", "conversations")


class PostgresStorage:
    engine = "postgres"

    def __init__(self, db: Database, *, max_turns: int = 100) -> None:
        self.db = db
        self.max_turns = max_turns
        self.turns: Turns = PostgresTurns(db, max_turns)
        self.notes: Notes = PostgresNotes(db)
        self.facts: Facts = PostgresFacts(db)
        self.chains: Chains = PostgresChains(db)
        self.inbox: Inbox = PostgresInbox(db)
        self.replicas: Replicas = PostgresReplicas(db)
        self.claims: Claims = PostgresClaims(db)
        self.limits: Limits = PostgresLimits(db)
        self.leadership: Leadership = PostgresLeadership(db)
        self.executions: Executions = PostgresExecutions(db)
        self.approvals: Approvals = PostgresApprovals(db)
        self.jobs: Jobs = PostgresJobs(db)
        self.stats: Stats = PostgresStats(db)
        self.channel_settings: ChannelSettings = PostgresChannelSettings(db)
        self.usage: Usage = PostgresUsage(db)

    @classmethod
    async def open(
        cls, url: str, *, max_turns: int = 100, pool_size: int = 10, migrate: bool = True
    ) -> PostgresStorage:
        db = await Database.open(url, pool_size=pool_size, migrate=migrate)
        return cls(db, max_turns=max_turns)

    @property
    def location(self) -> str:
        return self.db.location

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
        now = time.time()
        recorded = reply
        async with self.db.transaction() as conn:
            await fence(conn, claim)
            if chain is not None:
                chain_id = await insert_chain(conn, conv, chain)
                await insert_turn(conn, conv, "user", chain.question, chain.user_id, chain_id, now, self.max_turns)
                await insert_turn(conn, conv, "assistant", reply.text, "", chain_id, now, self.max_turns)
                if (usage := answer_usage(conv, chain, chain_id)) is not None:
                    await insert_usage(conn, usage)
                recorded = replace(reply, chain_id=chain_id)
            if inbox_id is not None:
                await answer_in(conn, inbox_id, recorded, error)
        return recorded

    async def prune(self, policy: PrunePolicy) -> dict[str, int]:
        p = policy
        async with self.db.transaction() as conn:
            # Unexported chains stay (when the export runs at all); so does the newest chain, as on SQLite
            # (which would hand its id out again), so both engines prune the same rows.
            kept_above: int | None = None
            if p.keep_unexported_of is not None:
                mark = await conn.fetchval(
                    "SELECT value FROM job_state WHERE job = $1 AND key = 'last_id'", p.keep_unexported_of
                )
                kept_above = int(mark) if mark is not None else 0

            async def delete(sql: str, *args: object) -> int:
                return affected(await conn.execute(sql, *args))

            counts = {
                "facts": await prune_facts(conn, p.now - p.fact_max_age_days * DAY),
                "turns": await delete("DELETE FROM turns WHERE created_at < $1", p.turns_before),
                "chains": await delete(
                    "DELETE FROM chains WHERE started_at < $1 AND ($2::bigint IS NULL OR id <= $2) "
                    "AND id < (SELECT MAX(id) FROM chains)",
                    p.chains_before,
                    kept_above,
                ),
                "tool executions": await delete("DELETE FROM tool_executions WHERE started_at < $1", p.chains_before),
                # Finished rows; and terminal sessions' rows, which no later process delivers.
                "inbox rows": await delete(
                    "DELETE FROM inbox WHERE updated_at < $1 AND (delivered_at IS NOT NULL OR state = 'failed' "
                    "OR platform = 'console')",
                    p.inbox_before,
                ),
                "job runs": await delete(
                    "DELETE FROM job_runs WHERE started_at < $1 AND state <> 'running'", p.job_runs_before
                ),
            }
            await conn.execute(
                "DELETE FROM conversations WHERE updated_at < $1 "
                "AND NOT EXISTS (SELECT 1 FROM turns WHERE turns.conversation_id = conversations.id)",
                p.turns_before,
            )
            # The audit refuses deletes except below the cutoff written here, in this same transaction.
            await conn.execute("INSERT INTO audit_retention (before) VALUES ($1)", p.audit_before)
            counts["audit rows"] = await delete("DELETE FROM approval_audit WHERE at < $1", p.audit_before)
            counts["setting changes"] = await delete("DELETE FROM setting_changes WHERE at < $1", p.audit_before)
            await conn.execute("DELETE FROM audit_retention")
            await conn.execute("DELETE FROM approvals WHERE state <> 'pending' AND created_at < $1", p.audit_before)
            counts["usage rows"] = await delete("DELETE FROM usage WHERE at < $1", p.usage_before)
            # Rate-limit windows end within the hour; replicas gone for a day will not come back under that id.
            await prune_counts(conn, p.now - DAY)
            await conn.execute("DELETE FROM replicas WHERE heartbeat_at < $1", p.now - DAY)
        return counts

    async def forget(self, channel: str) -> dict[str, int]:
        async with self.db.transaction() as conn:
            return {
                table: affected(await conn.execute(f"DELETE FROM {table} WHERE channel = $1", channel))
                for table in CHANNEL_TABLES
            }

    async def export_channel(self, channel: str) -> dict[str, Any]:
        turns = await self.turns.of_channel(channel, limit=self.max_turns)
        notes = await self.db.fetch(
            "SELECT thread, key, value, updated_at FROM working_memory WHERE channel = $1 "
            'ORDER BY thread COLLATE "C", key COLLATE "C"',
            channel,
        )
        return {
            "version": EXPORT_VERSION,
            "channel": channel,
            "facts": [asdict(f) for f in await self.facts.of_channel(channel)],
            "turns": [asdict(t) for t in turns],
            "working_memory": [dict(n) for n in notes],
        }

    async def import_channel(self, data: dict[str, Any], channel: str | None = None) -> None:
        if data.get("version") != EXPORT_VERSION:
            raise ValueError(f"unsupported memory export version {data.get('version')!r}")
        target = channel or str(data["channel"])
        async with self.db.transaction() as conn:
            for f in data.get("facts", []):
                await upsert_fact(conn, target, Fact(**f), keep_access_count=True)
            for t in data.get("turns", []):
                conv = Conversation(target, t.get("thread", ""))
                created = float(t["created_at"])
                await insert_turn(conn, conv, t["role"], t["text"], t["user_id"], None, created, self.max_turns)
            for n in data.get("working_memory", []):
                await conn.execute(
                    "INSERT INTO working_memory (channel, thread, key, value, updated_at) VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT (channel, thread, key) DO UPDATE SET value = excluded.value, "
                    "updated_at = excluded.updated_at",
                    target,
                    n["thread"],
                    n["key"],
                    n["value"],
                    float(n["updated_at"]),
                )

    async def ping(self, *, now: float) -> None:
        await self.jobs.set_mark("readyz", "checked_at", str(now))

    async def status(self) -> StorageStatus:
        rows = dict.fromkeys(TABLES, 0)
        # A database never migrated (`parley db status` opens without migrating) has no tables yet: 0 rows each.
        found = await self.db.fetch(
            "SELECT name FROM unnest($1::text[]) AS name WHERE to_regclass(name) IS NOT NULL", list(TABLES)
        )
        present = [str(r[0]) for r in found]
        if present:
            counts = await self.db.fetchrow("SELECT " + ", ".join(f"(SELECT COUNT(*) FROM {t})" for t in present))
            assert counts is not None
            rows.update(zip(present, map(int, counts), strict=True))
        return StorageStatus(self.engine, self.location, await self.db.version(), LATEST_VERSION, rows)

    async def load_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """For `parley db copy`: insert rows of `table` with their original ids (see `bulk`)."""
        await bulk.load_rows(self.db, table, rows)

    async def finish_load(self) -> None:
        """For `parley db copy`, after the last batch: new rows get ids above the copied ones."""
        await bulk.finish_load(self.db)

    async def is_empty(self) -> bool:
        """No row in any table: `parley db copy` refuses to copy into a database already in use."""
        return await bulk.is_empty(self.db)

    async def close(self) -> None:
        await self.db.close()
