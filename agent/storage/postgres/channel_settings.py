"""Channel settings on PostgreSQL: a value per scope and key, and the append-only audit of every change.

A change and its audit row commit in one transaction, and changes of one setting are serialised by a
transaction-scoped advisory lock on it: two replicas setting the same key at once each audit the value the
other one left, never the same old value twice (a row lock cannot do that for a key that has no row yet).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.storage.models import SettingChange
from agent.storage.postgres.database import Conn, Database
from agent.storage.rows import SETTING_CHANGE_COLUMNS, setting_change_from, settings_by_scope

# One 64-bit key per schema and setting; quoting each part keeps ("a", "bc") and ("ab", "c") apart.
LOCK_SETTING = (
    "SELECT pg_advisory_xact_lock("
    "hashtextextended(quote_literal(current_schema()) || quote_literal($1) || quote_literal($2), 0))"
)


async def _audit(conn: Conn, scope: str, key: str, old: str | None, new: str | None, actor: str, at: float) -> None:
    await conn.execute(
        "INSERT INTO setting_changes (scope, key, old, new, actor, at) VALUES ($1, $2, $3, $4, $5, $6)",
        scope,
        key,
        old,
        new,
        actor,
        at,
    )


class PostgresChannelSettings:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def values(self, scopes: Sequence[str]) -> dict[str, dict[str, str]]:
        names = list(dict.fromkeys(scopes))
        if not names:
            return {}
        rows = await self.db.fetch(
            "SELECT scope, key, value FROM channel_settings WHERE scope = ANY($1::text[]) "
            'ORDER BY scope COLLATE "C", key COLLATE "C"',
            names,
        )
        return settings_by_scope(rows)

    async def set(self, scope: str, key: str, value: str, *, actor: str, now: float) -> str | None:
        async with self.db.transaction() as conn:
            await conn.execute(LOCK_SETTING, scope, key)
            old = await conn.fetchval("SELECT value FROM channel_settings WHERE scope = $1 AND key = $2", scope, key)
            await conn.execute(
                "INSERT INTO channel_settings (scope, key, value, updated_by, updated_at) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated_by = excluded.updated_by, "
                "updated_at = excluded.updated_at",
                scope,
                key,
                value,
                actor,
                now,
            )
            await _audit(conn, scope, key, old, value, actor, now)
        return None if old is None else str(old)

    async def reset(self, scope: str, key: str, *, actor: str, now: float) -> str | None:
        async with self.db.transaction() as conn:
            await conn.execute(LOCK_SETTING, scope, key)
            old = await conn.fetchval(
                "DELETE FROM channel_settings WHERE scope = $1 AND key = $2 RETURNING value", scope, key
            )
            if old is None:
                return None
            await _audit(conn, scope, key, str(old), None, actor, now)
        return str(old)

    async def history(self, scope: str | None = None, since: float = 0.0) -> list[SettingChange]:
        rows = await self.db.fetch(
            f"SELECT {SETTING_CHANGE_COLUMNS} FROM setting_changes WHERE ($1::text IS NULL OR scope = $1) "
            "AND at >= $2 ORDER BY id",
            scope,
            since,
        )
        return [setting_change_from(r) for r in rows]
