"""The tool execution table: every call the runner makes, and the per-tool statistics drawn from it."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.store import Store


@dataclass(frozen=True)
class Execution:
    """One tool call as recorded: who asked, what was called with what, and how it ended."""

    tool: str
    args: dict[str, object]
    outcome: str
    observation: str
    duration_ms: float
    started_at: float
    run_id: str = ""
    channel: str = ""
    thread: str = ""
    user_id: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class ToolStats:
    tool: str
    calls: int
    successes: int
    failures: int
    mean_ms: float
    p95_ms: float


# What is kept of an observation in the table; the model may have seen more (up to the output cap).
STORED_OBSERVATION_CHARS = 2000


class ExecutionLog:
    """Writes and reads `tool_executions`; the only place that speaks SQL about tool calls."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, execution: Execution) -> None:
        e = execution
        await self.store.write(
            lambda db: db.execute(
                "INSERT INTO tool_executions (run_id, channel, thread, user_id, tool, args, outcome, observation, "
                "truncated, duration_ms, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    e.run_id,
                    e.channel,
                    e.thread,
                    e.user_id,
                    e.tool,
                    json.dumps(e.args, default=str, ensure_ascii=False),
                    e.outcome,
                    e.observation[:STORED_OBSERVATION_CHARS],
                    int(e.truncated),
                    e.duration_ms,
                    e.started_at,
                ),
            )
        )

    async def for_run(self, run_id: str) -> list[Execution]:
        rows = await self.store.fetchall(
            "SELECT tool, args, outcome, observation, duration_ms, started_at, run_id, channel, thread, user_id, "
            "truncated FROM tool_executions WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [_execution(r) for r in rows]

    async def recent(self, limit: int = 50) -> list[Execution]:
        rows = await self.store.fetchall(
            "SELECT tool, args, outcome, observation, duration_ms, started_at, run_id, channel, thread, user_id, "
            "truncated FROM tool_executions ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [_execution(r) for r in reversed(rows)]

    async def stats(self) -> dict[str, ToolStats]:
        """Calls, successes, failures, mean and p95 duration per tool, over the whole table."""
        rows = await self.store.fetchall(
            "SELECT tool, COUNT(*), SUM(outcome = 'ok'), AVG(duration_ms) FROM tool_executions GROUP BY tool"
        )
        stats = {}
        for tool, calls, ok, mean in rows:
            # Nearest-rank p95 read straight off the (tool, duration_ms) index.
            rank = max(math.ceil(0.95 * calls) - 1, 0)
            p95 = await self.store.fetchone(
                "SELECT duration_ms FROM tool_executions WHERE tool = ? ORDER BY duration_ms LIMIT 1 OFFSET ?",
                (tool, rank),
            )
            stats[tool] = ToolStats(tool, calls, ok, calls - ok, mean, p95[0] if p95 else 0.0)
        return stats


def _execution(row: Sequence[Any]) -> Execution:
    return Execution(
        tool=str(row[0]),
        args=json.loads(str(row[1])),
        outcome=str(row[2]),
        observation=str(row[3]),
        duration_ms=float(row[4]),
        started_at=float(row[5]),
        run_id=str(row[6]),
        channel=str(row[7]),
        thread=str(row[8]),
        user_id=str(row[9]),
        truncated=bool(row[10]),
    )
