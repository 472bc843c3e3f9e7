"""Channel settings on SQLite: a value per scope and key, and the append-only audit of every change.

A change and its audit row are written by one write (one transaction on the single writer thread), so the
audit never misses a change nor records one that did not happen; triggers refuse edits of the audit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from agent.storage.models import SettingChange
from agent.storage.rows import SETTING_CHANGE_COLUMNS, setting_change_from, settings_by_scope
from agent.storage.sqlite.database import Database


def _audit(
    db: sqlite3.Connection, scope: str, key: str, old: str | None, new: str | None, actor: str, at: float
) -> None:
    db.execute(
        "INSERT INTO setting_changes (scope, key, old, new, actor, at) VALUES (?, ?, ?, ?, ?, ?)",
        (scope, key, old, new, actor, at),
    )


def _current(db: sqlite3.Connection, scope: str, key: str) -> str | None:
    row = db.execute("SELECT value FROM channel_settings WHERE scope = ? AND key = ?", (scope, key)).fetchone()
    return None if row is None else str(row[0])


class SqliteChannelSettings:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def values(self, scopes: Sequence[str]) -> dict[str, dict[str, str]]:
        names = list(dict.fromkeys(scopes))
        if not names:
            return {}
        rows = await self.db.fetchall(
            f"SELECT scope, key, value FROM channel_settings WHERE scope IN ({', '.join('?' * len(names))}) "
            "ORDER BY scope, key",
            names,
        )
        return settings_by_scope(rows)

    async def set(self, scope: str, key: str, value: str, *, actor: str, now: float) -> str | None:
        def write(db: sqlite3.Connection) -> str | None:
            old = _current(db, scope, key)
            db.execute(
                "INSERT INTO channel_settings (scope, key, value, updated_by, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated_by = excluded.updated_by, "
                "updated_at = excluded.updated_at",
                (scope, key, value, actor, now),
            )
            _audit(db, scope, key, old, value, actor, now)
            return old

        return await self.db.write(write)

    async def reset(self, scope: str, key: str, *, actor: str, now: float) -> str | None:
        def write(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "DELETE FROM channel_settings WHERE scope = ? AND key = ? RETURNING value", (scope, key)
            ).fetchone()
            if row is None:
                return None
            _audit(db, scope, key, str(row[0]), None, actor, now)
            return str(row[0])

        return await self.db.write(write)

    async def history(self, scope: str | None = None, since: float = 0.0) -> list[SettingChange]:
        rows = await self.db.fetchall(
            f"SELECT {SETTING_CHANGE_COLUMNS} FROM setting_changes WHERE (? IS NULL OR scope = ?) AND at >= ? "
            "ORDER BY id",
            (scope, scope, since),
        )
        return [setting_change_from(r) for r in rows]
