"""Tool executions on PostgreSQL: every call the runner makes, and the per-tool statistics drawn from it."""

from __future__ import annotations

from agent.storage.models import Execution, ToolStats
from agent.storage.postgres.database import Database, marks
from agent.storage.rows import EXECUTION_COLUMNS, execution_from, execution_values


class PostgresExecutions:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, execution: Execution) -> None:
        await self.db.execute(
            f"INSERT INTO tool_executions ({EXECUTION_COLUMNS}) VALUES ({marks(EXECUTION_COLUMNS)})",
            *execution_values(execution),
        )

    async def for_run(self, run_id: str) -> list[Execution]:
        rows = await self.db.fetch(
            f"SELECT {EXECUTION_COLUMNS} FROM tool_executions WHERE run_id = $1 ORDER BY id", run_id
        )
        return [execution_from(r) for r in rows]

    async def recent(self, limit: int = 50) -> list[Execution]:
        rows = await self.db.fetch(f"SELECT {EXECUTION_COLUMNS} FROM tool_executions ORDER BY id DESC LIMIT $1", limit)
        return [execution_from(r) for r in reversed(rows)]

    async def stats(self) -> dict[str, ToolStats]:
        """Calls, successes, failures, mean and p95 duration per tool, over the whole table. The p95 is the
        nearest rank, ceil(0.95 n), which is what percentile_disc computes."""
        rows = await self.db.fetch(
            "SELECT tool, COUNT(*), COUNT(*) FILTER (WHERE outcome = 'ok'), AVG(duration_ms), "
            "percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) FROM tool_executions GROUP BY tool "
            'ORDER BY tool COLLATE "C"'
        )
        return {
            tool: ToolStats(tool, int(calls), int(ok), int(calls - ok), float(mean), float(p95))
            for tool, calls, ok, mean, p95 in rows
        }
