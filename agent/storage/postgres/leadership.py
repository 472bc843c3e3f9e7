"""Leadership on PostgreSQL: a session advisory lock per name, held on a connection of its own.

The lock belongs to a session, so it lives on a dedicated connection (never the pool: asyncpg resets a
pooled connection on release, advisory locks included; never a transaction-pooling proxy, which would hand the
session to someone else). A process that dies loses it at once: the server ends its session when the socket
closes. A leader whose host vanishes without closing the socket is cut off by `idle_session_timeout`: the
leader queries every CHECK_S, so a session silent for SILENT_S is gone and the server releases its lock.

Timeline of a takeover: the holder's session ends (at once for a killed process, within SILENT_S for a lost
host); a follower, trying every RETRY_S, then takes the lock. The old leader, if alive but cut off, stops its
duty when a check fails or goes unanswered for CHECK_TIMEOUT_S: CHECK_S + CHECK_TIMEOUT_S < SILENT_S, so it
stops before anyone else can start.

The lock key is two numbers: the hash of the schema (current_schema(), as the URL's search_path sets it) and
the hash of the name, so two Parleys in two schemas of one database do not elect each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from agent.storage.errors import StoreError, TransientStoreError
from agent.storage.leadership import Duty, Role, replica_identity
from agent.storage.postgres.database import CONNECT_TIMEOUT_S, Database

log = logging.getLogger("parley.storage")

RETRY_S = 1.0  # a follower tries the lock this often; so does a process whose connection failed
CHECK_S = 1.0  # the leader checks its connection this often
CHECK_TIMEOUT_S = 2.0  # a check (or an attempt) not answered within this means the connection is gone
SILENT_S = 5.0  # the server ends a session that sent nothing for this long: above RETRY_S and CHECK_S
CLOSE_TIMEOUT_S = 1.0
# How a leadership session names itself in pg_stat_activity (63 bytes at most): this prefix and the identity.
APPLICATION = "parley "

TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext(current_schema()), hashtext($1))"
# The holder of the lock, by the application name its session gave: pg_locks shows a two-number advisory key
# as classid, objid and objsubid 2.
HOLDER = (
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid = hashtext(current_schema())::oid AND l.objid = hashtext($1)::oid LIMIT 1"
)
# PostgreSQL 14 and later end silent sessions; an older server keeps them until TCP gives up.
SILENCE = (
    "SELECT set_config('idle_session_timeout', $1, false) WHERE current_setting('idle_session_timeout', true) "
    "IS NOT NULL"
)


class PostgresLeadership:
    """Leadership among the processes on one PostgreSQL database (and schema). Each `hold` opens its own
    connection, from the database's URL."""

    def __init__(
        self,
        db: Database,
        *,
        identity: str | None = None,
        retry_s: float = RETRY_S,
        check_s: float = CHECK_S,
        check_timeout_s: float = CHECK_TIMEOUT_S,
        silent_s: float = SILENT_S,
    ) -> None:
        self.db = db
        self.identity = identity or replica_identity()
        self.retry_s = retry_s
        self.check_s = check_s
        self.check_timeout_s = check_timeout_s
        self.silent_s = silent_s

    async def hold(self, name: str, duty: Duty, on_change: Callable[[Role], None] | None = None) -> None:
        last: list[Role] = []

        def tell(role: Role) -> None:
            if last != [role]:
                last[:] = [role]
                if on_change is not None:
                    on_change(role)

        failing = False  # a run of failures is logged once
        while True:
            ended: asyncio.Task[None] | None = None
            try:
                conn = await self._connect()
                failing = False
                try:
                    ended = await self._term(conn, name, duty, tell)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=CLOSE_TIMEOUT_S)  # aborts the socket when it cannot close cleanly
            except StoreError as exc:
                if not failing:
                    log.warning("cannot campaign for %s (%s); trying again every %g s", name, exc, self.retry_s)
                failing = True
            if ended is not None:  # the duty is over, and so is the campaign: with its outcome
                if not ended.cancelled():
                    ended.result()
                return
            tell(Role(leading=False))
            await asyncio.sleep(self.retry_s)

    async def _term(self, conn: Any, name: str, duty: Duty, tell: Callable[[Role], None]) -> asyncio.Task[None] | None:
        """One connection's life: campaign, then lead. The duty's task when it ended by itself, None when
        leadership was lost (its duty cancelled)."""
        await self._campaign(conn, name, tell)
        log.warning("this replica (%s) now leads %s", self.identity, name)
        tell(Role(leading=True, leader=self.identity))
        return await self._lead(conn, name, duty)

    async def _connect(self) -> Any:
        settings = {"application_name": (APPLICATION + self.identity)[:63]}
        with self.db.translating():
            conn = await asyncpg.connect(self.db.url, timeout=CONNECT_TIMEOUT_S, server_settings=settings)
        try:
            await self._ask(conn, SILENCE, str(int(self.silent_s * 1000)))
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _campaign(self, conn: Any, name: str, tell: Callable[[Role], None]) -> None:
        """Return once this session holds the lock; meanwhile say who does."""
        while not await self._ask(conn, TRY_LOCK, name):
            holder = await self._ask(conn, HOLDER, name)
            tell(Role(leading=False, leader=str(holder).removeprefix(APPLICATION) if holder else None))
            await asyncio.sleep(self.retry_s)

    async def _lead(self, conn: Any, name: str, duty: Duty) -> asyncio.Task[None] | None:
        """Run the duty while the connection lives: its task once it ended by itself, or None when the
        connection was lost and the duty cancelled."""
        term = asyncio.create_task(duty(), name=f"leading:{name}")
        watch = asyncio.create_task(self._watch(conn), name=f"watching:{name}")
        try:
            done, _ = await asyncio.wait({term, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # The duty goes first: it must have stopped before the lock can pass to another process.
            for task in (term, watch):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if term in done:
            return term
        log.warning("this replica (%s) lost the leadership of %s: %s", self.identity, name, watch.result())
        return None

    async def _watch(self, conn: Any) -> str:
        """Return why the connection is gone: closed (the server said so at once) or a check that failed."""
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), timeout=self.check_s)
            if closed.is_set() or conn.is_closed():
                return "its database connection closed"
            try:
                await self._ask(conn, "SELECT 1")
            except StoreError as exc:
                return str(exc)

    async def _ask(self, conn: Any, sql: str, *args: object) -> Any:
        """One statement on the leadership connection, within CHECK_TIMEOUT_S."""
        try:
            with self.db.translating():
                return await asyncio.wait_for(conn.fetchval(sql, *args), timeout=self.check_timeout_s)
        except TimeoutError:
            raise TransientStoreError(
                f"PostgreSQL at {self.db.location} did not answer within {self.check_timeout_s:g} s"
            ) from None
