"""Bulk loading for `parley db copy`: rows of another engine written with their own ids, then the identity
sequences moved past them.

Rows arrive as dicts of column -> value, as `SqliteStorage.rows` gives them (without its `_rowid`). Values are
coerced to each column's type, since SQLite may hold an integer in a TEXT column; a fact's index terms are
rebuilt, since SQLite stores them folded with the channel and PostgreSQL stores plain words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.storage.models import TABLES
from agent.storage.postgres.database import Conn, Database
from agent.storage.terms import channel_terms

# What each column type's values are made into; a type not listed (none in the schema) is passed through.
COERCE: dict[str, Callable[[Any], Any]] = {
    "text": str,
    "bigint": int,
    "integer": int,
    "double precision": float,
}


async def _columns(conn: Conn, table: str) -> dict[str, str]:
    """The table's writable columns (generated ones left out) and their types, as found on the search_path."""
    rows = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        table,
    )
    return {r[0]: r[1] for r in rows}


def _coerce(value: Any, kind: str) -> Any:
    convert = COERCE.get(kind)
    return value if value is None or convert is None else convert(value)


async def load_rows(db: Database, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert the rows as they are, ids included, in one transaction. Raises ValueError for a table or a column
    this schema does not have."""
    if table not in TABLES:
        raise ValueError(f"no table {table!r}")
    if not rows:
        return
    if table == "facts":
        # Rebuilt, not trusted: the index terms are derived data, whatever wrote the source.
        rows = [
            {
                **r,
                "key_terms": channel_terms(r["channel"], r["key"]),
                "value_terms": channel_terms(r["channel"], r["value"]),
            }
            for r in rows
        ]
    names = list(rows[0])
    async with db.transaction() as conn:
        kinds = await _columns(conn, table)
        unknown = [n for n in names if n not in kinds]
        if unknown:
            raise ValueError(f"table {table} has no column(s) {', '.join(unknown)}")
        placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
        quoted = ", ".join(f'"{n}"' for n in names)
        await conn.executemany(
            f"INSERT INTO {table} ({quoted}) OVERRIDING SYSTEM VALUE VALUES ({placeholders})",
            [tuple(_coerce(r[n], kinds[n]) for n in names) for r in rows],
        )


async def finish_load(db: Database) -> None:
    """Move every identity sequence past the largest id loaded, so the next insert does not collide."""
    async with db.transaction() as conn:
        # Tables with a natural key instead (chain_steps, job_state, ...) have no sequence.
        found = await conn.fetch(
            "SELECT name FROM unnest($1::text[]) AS name WHERE EXISTS (SELECT 1 FROM pg_attribute "
            "WHERE attrelid = to_regclass(name) AND attname = 'id' AND attidentity <> '')",
            list(TABLES),
        )
        for table in (str(r[0]) for r in found):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {table}"
            )


async def is_empty(db: Database) -> bool:
    """No row in any table: a copy may start here without mixing two databases."""
    checks = " AND ".join(f"NOT EXISTS (SELECT 1 FROM {table})" for table in TABLES)
    return bool(await db.fetchval(f"SELECT {checks}"))
