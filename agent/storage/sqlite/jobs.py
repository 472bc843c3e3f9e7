"""Scheduled job runs and job marks on SQLite, and the cross-table counts the metrics summary reads."""

from __future__ import annotations

from collections.abc import Collection

from agent.storage.models import RunRecord, WindowCounts
from agent.storage.rows import RUN_COLUMNS, window_counts
from agent.storage.sqlite.database import Database


class SqliteJobs:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def interrupt_running(self, *, now: float, keep_owners: Collection[str] = ()) -> int:
        """Every run left `running` is an earlier process's: one process holds the file."""
        return await self.db.write(
            lambda db: (
                db.execute(
                    "UPDATE job_runs SET state = 'interrupted', finished_at = ? WHERE state = 'running'", (now,)
                ).rowcount
            )
        )

    async def claim(self, job: str, slot: str, *, started_at: float, owner: str = "") -> bool:
        claimed = await self.db.write(
            lambda db: (
                db.execute(
                    "INSERT INTO job_runs (job, slot, started_at) VALUES (?, ?, ?) ON CONFLICT (job, slot) DO NOTHING",
                    (job, slot, started_at),
                ).rowcount
            )
        )
        return bool(claimed)

    async def finish(
        self, job: str, slot: str, state: str, *, finished_at: float, detail: str = "", error_id: str | None = None
    ) -> None:
        await self.db.write(
            lambda db: db.execute(
                "UPDATE job_runs SET state = ?, finished_at = ?, detail = ?, error_id = ? WHERE job = ? AND slot = ?",
                (state, finished_at, detail, error_id, job, slot),
            )
        )

    async def last_ok(self, job: str) -> float | None:
        row = await self.db.fetchone(
            "SELECT MAX(started_at) FROM job_runs WHERE job = ? AND state = 'ok' AND slot NOT LIKE 'manual:%'", (job,)
        )
        return float(row[0]) if row and row[0] is not None else None

    async def last_runs(self) -> dict[str, RunRecord]:
        rows = await self.db.fetchall(
            f"SELECT {RUN_COLUMNS} FROM job_runs WHERE id IN (SELECT MAX(id) FROM job_runs GROUP BY job)"
        )
        return {r["job"]: RunRecord(*r) for r in rows}

    async def runs(self, job: str) -> list[RunRecord]:
        rows = await self.db.fetchall(f"SELECT {RUN_COLUMNS} FROM job_runs WHERE job = ? ORDER BY id", (job,))
        return [RunRecord(*r) for r in rows]

    async def mark(self, job: str, key: str) -> str | None:
        row = await self.db.fetchone("SELECT value FROM job_state WHERE job = ? AND key = ?", (job, key))
        return str(row[0]) if row else None

    async def set_mark(self, job: str, key: str, value: str) -> None:
        await self.db.write(
            lambda db: db.execute(
                "INSERT INTO job_state (job, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (job, key) DO UPDATE SET value = excluded.value",
                (job, key, value),
            )
        )


class SqliteStats:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def window(self, since: float, until: float) -> WindowCounts:
        window = (since, until)
        statuses = await self.db.fetchall(
            "SELECT COALESCE(json_extract(reply, '$.status'), state), COUNT(*) FROM inbox "
            "WHERE received_at >= ? AND received_at < ? AND state != 'failed' GROUP BY 1",
            window,
        )
        undelivered = await self.db.fetchone(
            "SELECT COUNT(*) FROM inbox WHERE received_at >= ? AND received_at < ? AND state = 'failed'", window
        )
        latencies = await self.db.fetchall(
            "SELECT delivered_at - received_at FROM inbox WHERE received_at >= ? AND received_at < ? "
            "AND delivered_at IS NOT NULL",
            window,
        )
        model = await self.db.fetchone(
            "SELECT COALESCE(SUM(model_calls), 0), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) "
            "FROM chains WHERE started_at >= ? AND started_at < ?",
            window,
        )
        tools = await self.db.fetchall(
            "SELECT tool, COUNT(*), SUM(outcome != 'ok') FROM tool_executions "
            "WHERE started_at >= ? AND started_at < ? GROUP BY tool ORDER BY 2 DESC, 1",
            window,
        )
        approvals = await self.db.fetchall(
            "SELECT state, COUNT(*) FROM approvals WHERE created_at >= ? AND created_at < ? GROUP BY state", window
        )
        assert model is not None and undelivered is not None
        return window_counts(statuses, int(undelivered[0]), latencies, model, tools, approvals)
