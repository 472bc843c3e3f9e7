"""Model usage on SQLite: one row per answer (written with its chain by `record_exchange`), summed for budgets
and reports over the indexes by time, by user and time, and by channel and time."""

from __future__ import annotations

import sqlite3

from agent.storage.models import UsageRecord, UsageTotal
from agent.storage.rows import USAGE_COLUMNS, USAGE_SUMS, usage_group, usage_total, usage_values
from agent.storage.sqlite.database import Database, marks


def insert_usage(db: sqlite3.Connection, usage: UsageRecord) -> None:
    """Write a usage row inside the caller's transaction (the exchange's)."""
    db.execute(f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({marks(USAGE_COLUMNS)})", usage_values(usage))


class SqliteUsage:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, usage: UsageRecord) -> None:
        await self.db.write(lambda db: insert_usage(db, usage))

    async def spent(self, *, since: float, user: str | None = None, channel: str | None = None) -> UsageTotal:
        # Only the filters asked for, so the planner can pick the index by user or by channel for them. With both,
        # the unary + keeps SQLite off the channel index (a busy channel has many more rows than one of its
        # users): without statistics it picked it, 8 ms against 0.4 ms over 200,000 rows.
        where: list[str] = ["at >= ?"]
        params: list[object] = [since]
        for column, value in (("user_id", user), ("+channel" if user is not None else "channel", channel)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        row = await self.db.fetchone(f"SELECT {USAGE_SUMS} FROM usage WHERE {' AND '.join(where)}", params)
        assert row is not None  # an aggregate without GROUP BY always has its one row
        return usage_total("", tuple(row))

    async def totals(self, *, since: float, by: str, until: float | None = None, limit: int = 50) -> list[UsageTotal]:
        column = usage_group(by)
        rows = await self.db.fetchall(
            f"SELECT {column}, {USAGE_SUMS} FROM usage WHERE at >= ? AND (? IS NULL OR at < ?) GROUP BY {column} "
            f"ORDER BY SUM(input_tokens) + SUM(output_tokens) DESC, {column} LIMIT ?",
            (since, until, until, limit),
        )
        return [usage_total(str(r[0]), tuple(r)[1:]) for r in rows]
