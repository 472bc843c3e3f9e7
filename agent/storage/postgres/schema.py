"""The PostgreSQL schema: numbered SQL files (`migrations/NNN_name.sql`), applied in order, each once.

`schema_migrations` records every applied version. Steps are append-only: never edit a released file, add
the next number. Start-up applies what is missing under a transaction-scoped advisory lock, so of several
processes starting together one migrates and the others wait, then find nothing left to do.
"""

from __future__ import annotations

import re
import time
from importlib.resources import files
from typing import TYPE_CHECKING

from agent.storage.errors import StoreError

if TYPE_CHECKING:
    from agent.storage.postgres.database import Conn

# The advisory lock key of Parley's migrations (the bytes of "parley" as a number): one per database, so
# schemas migrate one at a time, and so do two CREATE EXTENSIONs, which would otherwise race.
MIGRATION_LOCK = int.from_bytes(b"parley", "big")
MIGRATION_FILE = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")


def _load() -> tuple[str, ...]:
    """The SQL of every step, in order; the numbers must run 001, 002, ... without a gap."""
    folder = files("agent.storage.postgres").joinpath("migrations")
    found = sorted(
        (int(match[1]), entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if (match := MIGRATION_FILE.fullmatch(entry.name))
    )
    numbers = [number for number, _, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"PostgreSQL migrations must be numbered 1..n without gaps, found {numbers}")
    return tuple(sql for _, _, sql in found)


MIGRATIONS = _load()
LATEST_VERSION = len(MIGRATIONS)


async def version(conn: Conn) -> int:
    """The newest applied step; 0 for a database Parley has never migrated."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"))


def refuse_newer(current: int, location: str) -> None:
    """A database migrated by a newer Parley may hold what this code would misread or break."""
    if current > LATEST_VERSION:
        raise StoreError(
            f"database {location} has schema version {current}, newer than this code ({LATEST_VERSION}); "
            "upgrade Parley or use another PARLEY_DB__URL"
        )


async def migrate(conn: Conn, location: str) -> int:
    """Apply the missing steps inside the caller's transaction, holding the migration lock until it ends.
    Returns the version the database is at."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
    current = await version(conn)
    refuse_newer(current, location)
    if current == LATEST_VERSION:
        return current
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )
    for step in range(current, LATEST_VERSION):
        await conn.execute(MIGRATIONS[step])
        await conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)", step + 1, time.time())
    return LATEST_VERSION
