"""The SQLite store: connections, pragmas, migrations and transactions.

One writer connection behind an asyncio lock (`BEGIN IMMEDIATE`, so a write never upgrades a read lock
and deadlocks) and one reader connection; WAL lets the reader run while the writer writes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from agent.migrations import LATEST_VERSION, MIGRATIONS

Params = Iterable[Any] | dict[str, Any]


class StoreError(Exception):
    """The database cannot be used: corrupted, locked, or newer than this code. The message says which."""


class Store:
    """Owns the connections to one SQLite file. Open with `await Store.open(path)`, close on shutdown."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path | str, *, busy_timeout_ms: int = 5000, migrate_to: int | None = LATEST_VERSION
    ) -> Store:
        """Open (creating if needed) and migrate. `migrate_to=None` leaves the schema as it is."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        writer = reader = None
        try:
            writer = await _connect(path, busy_timeout_ms)
            await writer.execute("PRAGMA journal_mode = WAL")
            store_version = await user_version(writer)
            if store_version > LATEST_VERSION:
                raise StoreError(
                    f"database {path} has schema version {store_version}, newer than this code "
                    f"({LATEST_VERSION}); upgrade Parley or use another PARLEY_DB__PATH"
                )
            if migrate_to is not None:
                await apply_migrations(writer, migrate_to)
            reader = await _connect(path, busy_timeout_ms)
            await reader.execute("PRAGMA query_only = ON")
        except (sqlite3.DatabaseError, StoreError) as exc:
            for conn in (writer, reader):
                if conn is not None:
                    await conn.close()
            raise _explain(path, exc) from None
        return cls(path, writer, reader)

    async def close(self) -> None:
        """Close both connections; aiosqlite threads are not daemons, so a forgotten close hangs exit."""
        async with self._write_lock:
            await self._writer.close()
        await self._reader.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: `BEGIN IMMEDIATE` under the writer lock; commits, or rolls back on error."""
        async with self._write_lock:
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise
            await self._writer.execute("COMMIT")

    async def fetchall(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        async with self._reader.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> sqlite3.Row | None:
        async with self._reader.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def version(self) -> int:
        return await user_version(self._reader)


async def _connect(path: Path, busy_timeout_ms: int) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await conn.close()
        raise
    return conn


async def user_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def apply_migrations(conn: aiosqlite.Connection, target: int = LATEST_VERSION) -> None:
    """Apply the steps from the current version up to `target`, each in its own transaction."""
    current = await user_version(conn)
    for version in range(current, min(target, LATEST_VERSION)):
        script = f"BEGIN IMMEDIATE;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
        try:
            await conn.executescript(script)
        except sqlite3.Error:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise


def _explain(path: Path, exc: Exception) -> StoreError:
    """Turn a low-level SQLite error at start-up into one clear sentence."""
    if isinstance(exc, StoreError):
        return exc
    text = str(exc)
    if "locked" in text or "busy" in text:
        return StoreError(f"database {path} is locked by another process ({text})")
    if "not a database" in text or "malformed" in text:
        return StoreError(f"database {path} is not a valid SQLite database; it may be corrupted ({text})")
    if "unable to open" in text:
        return StoreError(f"database {path} cannot be opened; check the path and permissions ({text})")
    return StoreError(f"database {path} cannot be used: {text}")
