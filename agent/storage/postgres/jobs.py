"""Scheduled job runs and job marks on PostgreSQL, and the cross-table counts the metrics summary reads.

A run slot is unique per job, so with several replicas each slot's run is claimed by exactly one of them.
"""

from __future__ import annotations

from collections.abc import Collection

from agent.storage.models import RunRecord, WindowCounts
from agent.storage.postgres.database import Database
from agent.storage.rows import RUN_COLUMNS, window_counts


class PostgresJobs:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def interrupt_running(self, *, now: float, keep_owners: Collection[str] = ()) -> int:
        """Runs of replicas that are gone; a live replica's run goes on."""
        return await self.db.execute(
            "UPDATE job_runs SET state = 'interrupted', finished_at = $1 "
            "WHERE state = 'running' AND NOT owner = ANY($2::text[])",
            now,
            list(keep_owners),
        )

    async def claim(self, job: str, slot: str, *, started_at: float, owner: str = "") -> bool:
        claimed = await self.db.fetchval(
            "INSERT INTO job_runs (job, slot, started_at, owner) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (job, slot) DO NOTHING RETURNING id",
            job,
            slot,
            started_at,
            owner,
        )
        return claimed is not None

    async def finish(
        self, job: str, slot: str, state: str, *, finished_at: float, detail: str = "", error_id: str | None = None
    ) -> None:
        await self.db.execute(
            "UPDATE job_runs SET state = $1, finished_at = $2, detail = $3, error_id = $4 WHERE job = $5 AND slot = $6",
            state,
            finished_at,
            detail,
            error_id,
            job,
            slot,
        )

    async def last_ok(self, job: str) -> float | None:
        # ILIKE: SQLite's LIKE ignores the case of ASCII letters, and both engines must skip the same runs.
        started = await self.db.fetchval(
            "SELECT MAX(started_at) FROM job_runs WHERE job = $1 AND state = 'ok' AND slot NOT ILIKE 'manual:%'", job
        )
        return float(started) if started is not None else None

    async def last_runs(self) -> dict[str, RunRecord]:
        rows = await self.db.fetch(
            f"SELECT {RUN_COLUMNS} FROM job_runs WHERE id IN (SELECT MAX(id) FROM job_runs GROUP BY job) ORDER BY id"
        )
        return {r["job"]: RunRecord(*r) for r in rows}

    async def runs(self, job: str) -> list[RunRecord]:
        rows = await self.db.fetch(f"SELECT {RUN_COLUMNS} FROM job_runs WHERE job = $1 ORDER BY id", job)
        return [RunRecord(*r) for r in rows]

    async def mark(self, job: str, key: str) -> str | None:
        value = await self.db.fetchval("SELECT value FROM job_state WHERE job = $1 AND key = $2", job, key)
        return str(value) if value is not None else None

    async def set_mark(self, job: str, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO job_state (job, key, value) VALUES ($1, $2, $3) "
            "ON CONFLICT (job, key) DO UPDATE SET value = excluded.value",
            job,
            key,
            value,
        )


class PostgresStats:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def window(self, since: float, until: float) -> WindowCounts:
        window = "received_at >= $1 AND received_at < $2"
        statuses = await self.db.fetch(
            "SELECT COALESCE(reply::json ->> 'status', state), COUNT(*) FROM inbox "
            f"WHERE {window} AND state <> 'failed' GROUP BY 1",
            since,
            until,
        )
        undelivered = await self.db.fetchval(
            f"SELECT COUNT(*) FROM inbox WHERE {window} AND state = 'failed'", since, until
        )
        latencies = await self.db.fetch(
            f"SELECT delivered_at - received_at FROM inbox WHERE {window} AND delivered_at IS NOT NULL ORDER BY id",
            since,
            until,
        )
        model = await self.db.fetchrow(
            "SELECT COALESCE(SUM(model_calls), 0), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) "
            "FROM chains WHERE started_at >= $1 AND started_at < $2",
            since,
            until,
        )
        tools = await self.db.fetch(
            "SELECT tool, COUNT(*), COUNT(*) FILTER (WHERE outcome <> 'ok') FROM tool_executions "
            'WHERE started_at >= $1 AND started_at < $2 GROUP BY tool ORDER BY COUNT(*) DESC, tool COLLATE "C"',
            since,
            until,
        )
        approvals = await self.db.fetch(
            "SELECT state, COUNT(*) FROM approvals WHERE created_at >= $1 AND created_at < $2 GROUP BY state",
            since,
            until,
        )
        assert model is not None
        return window_counts(statuses, int(undelivered), latencies, model, tools, approvals)
