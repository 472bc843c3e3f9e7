"""Model usage on PostgreSQL: one row per answer (written with its chain by `record_exchange`), summed for
budgets and reports over the indexes by time, by user and time, and by channel and time."""

from __future__ import annotations

from agent.storage.models import UsageRecord, UsageTotal
from agent.storage.postgres.database import Conn, Database, marks
from agent.storage.rows import USAGE_COLUMNS, USAGE_SUMS, usage_group, usage_total, usage_values

INSERT_USAGE = f"INSERT INTO usage ({USAGE_COLUMNS}) VALUES ({marks(USAGE_COLUMNS)})"


async def insert_usage(conn: Conn, usage: UsageRecord) -> None:
    """Write a usage row inside the caller's transaction (the exchange's)."""
    await conn.execute(INSERT_USAGE, *usage_values(usage))


class PostgresUsage:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, usage: UsageRecord) -> None:
        await self.db.execute(INSERT_USAGE, *usage_values(usage))

    async def spent(self, *, since: float, user: str | None = None, channel: str | None = None) -> UsageTotal:
        # Only the filters asked for: a generic plan of `($2 IS NULL OR user_id = $2)` could not use an index.
        where: list[str] = ["at >= $1"]
        params: list[object] = [since]
        for column, value in (("user_id", user), ("channel", channel)):
            if value is not None:
                params.append(value)
                where.append(f"{column} = ${len(params)}")
        row = await self.db.fetchrow(f"SELECT {USAGE_SUMS} FROM usage WHERE {' AND '.join(where)}", *params)
        assert row is not None  # an aggregate without GROUP BY always has its one row
        return usage_total("", tuple(row))

    async def totals(self, *, since: float, by: str, until: float | None = None, limit: int = 50) -> list[UsageTotal]:
        column = usage_group(by)
        rows = await self.db.fetch(
            f"SELECT {column}, {USAGE_SUMS} FROM usage WHERE at >= $1 AND ($2::double precision IS NULL OR at < $2) "
            f'GROUP BY {column} ORDER BY SUM(input_tokens) + SUM(output_tokens) DESC, {column} COLLATE "C" LIMIT $3',
            since,
            until,
            limit,
        )
        return [usage_total(str(r[0]), tuple(r)[1:]) for r in rows]
