"""Tool executions on SQLite: every call the runner makes, and the per-tool statistics drawn from it."""

from __future__ import annotations

import math

from agent.storage.models import Execution, ToolStats
from agent.storage.rows import EXECUTION_COLUMNS, execution_from, execution_values
from agent.storage.sqlite.database import Database, marks


class SqliteExecutions:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, execution: Execution) -> None:
        values = execution_values(execution)
        await self.db.write(
            lambda db: db.execute(
                f"INSERT INTO tool_executions ({EXECUTION_COLUMNS}) VALUES ({marks(EXECUTION_COLUMNS)})",
                values,
            )
        )

    async def for_run(self, run_id: str) -> list[Execution]:
        rows = await self.db.fetchall(
            f"SELECT {EXECUTION_COLUMNS} FROM tool_executions WHERE run_id = ? ORDER BY id", (run_id,)
        )
        return [execution_from(r) for r in rows]

    async def recent(self, limit: int = 50) -> list[Execution]:
        rows = await self.db.fetchall(
            f"SELECT {EXECUTION_COLUMNS} FROM tool_executions ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [execution_from(r) for r in reversed(rows)]

    async def stats(self) -> dict[str, ToolStats]:
        """Calls, successes, failures, mean and p95 duration per tool, over the whole table."""
        rows = await self.db.fetchall(
            "SELECT tool, COUNT(*), SUM(outcome = 'ok'), AVG(duration_ms) FROM tool_executions GROUP BY tool"
        )
        stats = {}
        for tool, calls, ok, mean in rows:
            # Nearest-rank p95 read straight off the (tool, duration_ms) index.
            rank = max(math.ceil(0.95 * calls) - 1, 0)
            p95 = await self.db.fetchone(
                "SELECT duration_ms FROM tool_executions WHERE tool = ? ORDER BY duration_ms LIMIT 1 OFFSET ?",
                (tool, rank),
            )
            stats[tool] = ToolStats(tool, calls, ok, calls - ok, mean, p95[0] if p95 else 0.0)
        return stats
