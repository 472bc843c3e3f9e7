"""The PostgreSQL database under the storage seam: the asyncpg pool, opening it, and error translation.

Repositories run one statement through `Database` (autocommit) or several through `Database.transaction()`.
No asyncpg exception leaves this package: each becomes a `StoreError`, a `TransientStoreError` when trying
again may help, in one line and without the password.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

# asyncpg ships no type information: `Conn` and `Row` below type the part of it this package uses.
import asyncpg  # type: ignore[import-untyped]
from yarl import URL

from agent.storage import mask_url
from agent.storage.errors import StoreError, StoreMisconfigured, TransientStoreError
from agent.storage.postgres import schema
from agent.storage.rows import Row, count

# A server that does not answer within this is reported as unreachable rather than hanging start-up.
CONNECT_TIMEOUT_S = 5.0
# SQLSTATEs worth a retry: connection exceptions (08), transaction rollbacks such as serialization failures and
# deadlocks (40), insufficient resources (53), shutdown and start-up (57P), a lock not available, a timeout.
TRANSIENT_SQLSTATES = ("08", "40", "53", "57P", "55P03", "57014")
# What asyncpg raises: the server's errors and client-side ones (a closed connection, a bad argument); and what
# its sockets raise, which only counts as the database's when a database call raised it.
ASYNCPG_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
DRIVER_ERRORS = (*ASYNCPG_ERRORS, OSError)


class Conn(Protocol):
    """An asyncpg connection inside a transaction, as the repositories use it."""

    async def execute(self, query: str, *args: object) -> str: ...

    async def executemany(self, command: str, args: Iterable[Sequence[object]]) -> None: ...

    async def fetch(self, query: str, *args: object) -> list[Row]: ...

    async def fetchrow(self, query: str, *args: object) -> Row | None: ...

    async def fetchval(self, query: str, *args: object) -> Any: ...


def marks(columns: str | tuple[str, ...], first: int = 1) -> str:
    """The `$n` placeholders for a list of columns, numbered from `first`."""
    return ", ".join(f"${i}" for i in range(first, first + count(columns)))


def affected(status: str) -> int:
    """The row count of a command status such as `DELETE 3` or `INSERT 0 1`."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class Database:
    """The pool of connections to one PostgreSQL database. Open with `await Database.open(url)`, close on
    shutdown. The schema is the first one on the connections' search_path (the URL may set it)."""

    def __init__(self, pool: Any, url: str) -> None:
        self._pool = pool
        # For the few dedicated connections beside the pool (LISTEN, leadership locks).
        self.url = url
        self._password = _password(url)
        self.location = masked(url)

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10, migrate: bool = True) -> Database:
        """Connect (within CONNECT_TIMEOUT_S), then migrate to the latest schema, or with `migrate=False` only
        check that the schema is not newer than this code."""
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=max(pool_size, 1), timeout=CONNECT_TIMEOUT_S)
        except (*DRIVER_ERRORS, ValueError) as exc:
            raise explain_connect(url, exc) from None
        db = cls(pool, url)
        try:
            async with db.transaction() as conn:
                if migrate:
                    await schema.migrate(conn, db.location)
                else:
                    schema.refuse_newer(await schema.version(conn), db.location)
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        """Close every connection; closing twice is harmless."""
        if not self._pool.is_closing():
            await self._pool.close()

    @contextmanager
    def translating(self) -> Iterator[None]:
        """Turn whatever asyncpg raises inside the block into the seam's errors."""
        try:
            yield
        except DRIVER_ERRORS as exc:
            raise translate(exc, self.location, self._password) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """A pooled connection inside one transaction: committed when the block ends, rolled back if it raises.

        What the block raises passes through as it is (an asyncpg error translated); what acquiring, committing
        or rolling back raises is translated."""
        raised: BaseException | None = None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                try:
                    yield cast(Conn, conn)
                except BaseException as exc:
                    raised = exc
                    raise
        except DRIVER_ERRORS as exc:
            if exc is raised and not isinstance(exc, ASYNCPG_ERRORS):
                raise
            raise translate(exc, self.location, self._password) from exc

    async def execute(self, sql: str, *args: object) -> int:
        """Run one statement; returns how many rows it touched."""
        with self.translating():
            return affected(await self._pool.execute(sql, *args))

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        with self.translating():
            return cast(list[Row], await self._pool.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: object) -> Row | None:
        with self.translating():
            return cast(Row | None, await self._pool.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: object) -> Any:
        with self.translating():
            return await self._pool.fetchval(sql, *args)

    async def version(self) -> int:
        async with self.transaction() as conn:
            return await schema.version(conn)


def translate(exc: BaseException, location: str, password: str | None = None) -> StoreError:
    """An asyncpg or socket error as the seam's: unreachable servers and retryable SQLSTATEs are transient."""
    text = _one_line(str(exc) or type(exc).__name__, password)
    sqlstate = str(getattr(exc, "sqlstate", "") or "")
    if isinstance(exc, OSError) or sqlstate.startswith(("08", "57P03")):
        return TransientStoreError(f"cannot reach PostgreSQL at {location}: {text}")
    if sqlstate.startswith(TRANSIENT_SQLSTATES):
        return TransientStoreError(f"PostgreSQL: {text}")
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in text and "pool is closed" not in text:
        return TransientStoreError(f"PostgreSQL connection lost: {text}")
    return StoreError(f"PostgreSQL: {text}")


def explain_connect(url: str, exc: BaseException) -> StoreError:
    """Why a connection could not be opened, in one sentence naming the user or database at fault."""
    location = masked(url)
    password = _password(url)
    text = _one_line(str(exc) or type(exc).__name__, password)
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return StoreMisconfigured(f"PostgreSQL refused the password for user {_user(url)} at {location}")
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return StoreMisconfigured(f"PostgreSQL at {location} refused user {_user(url)}: {text}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StoreMisconfigured(f"PostgreSQL at {location}: {text}; create that database or fix the URL")
    if isinstance(exc, ValueError) and not isinstance(exc, asyncpg.DataError):
        return StoreMisconfigured(f"database URL {location} is not valid: {text}")
    return translate(exc, location, password)


def masked(url: str) -> str:
    """The URL fit for logs: `mask_url`, and a password given as a query parameter masked too."""
    shown = mask_url(url)
    try:
        parsed = URL(shown)
    except ValueError:
        return shown
    return str(parsed.update_query(password="***")) if "password" in parsed.query else shown


def _one_line(text: str, password: str | None) -> str:
    """The text on one line, with the password (as written in the URL, or decoded) replaced by `***`."""
    if password:
        for spelling in {password, unquote(password)}:
            text = text.replace(spelling, "***")
    return " ".join(text.split())


def _parts(url: str) -> tuple[str | None, str | None, dict[str, list[str]]]:
    """The user, the password and the query of a URL; whatever does not parse counts as absent."""
    try:
        parsed = urlsplit(url)
        return parsed.username, parsed.password, parse_qs(parsed.query)
    except ValueError:
        return None, None, {}


def _password(url: str) -> str | None:
    """The URL's password (in its netloc or its query), to scrub from any error text."""
    _, password, query = _parts(url)
    return password or (query.get("password") or [""])[-1] or None


def _user(url: str) -> str:
    """Who the connection logs in as: the URL's user, else (as libpq does) PGUSER or the OS user."""
    user, _, query = _parts(url)
    named = unquote(user) if user else (query.get("user") or [""])[-1]
    return named or os.environ.get("PGUSER") or getpass.getuser()
