"""Leadership (agent/storage/leadership.py): one holder per name among the processes on a database.

On PostgreSQL every storage below is its own "process": its own pool and its own leadership connection on the
same schema. Losses are made the ways they happen: the server ends the leader's session, or the leader falls
silent and the server cuts it off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg  # type: ignore[import-untyped]
import pytest

from agent.storage import Storage, TransientStoreError, open_storage
from agent.storage.leadership import Leadership, Role
from agent.storage.postgres.database import Database
from agent.storage.postgres.leadership import PostgresLeadership
from agent.storage.sqlite.leadership import SoleLeadership
from tests.conftest import until
from tests.pg import run_sync, schema_url

pytestmark = pytest.mark.serial
NAME = "discord-gateway"


@dataclass
class Candidate:
    """One process campaigning for NAME: its roles as announced, and whether its duty runs."""

    leadership: Leadership
    roles: list[Role] = field(default_factory=list)
    terms: int = 0
    running: bool = False
    task: asyncio.Task[None] | None = None

    async def duty(self) -> None:
        self.terms += 1
        self.running = True
        try:
            await asyncio.Event().wait()
        finally:
            self.running = False

    def campaign(self, name: str = NAME) -> Candidate:
        self.task = asyncio.create_task(self.leadership.hold(name, self.duty, self.roles.append))
        return self

    @property
    def role(self) -> Role | None:
        return self.roles[-1] if self.roles else None

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


Open = Callable[..., Awaitable[Candidate]]


@pytest.fixture
async def opened(pg_url: str) -> AsyncIterator[Open]:
    """Makes candidates, each on a storage of its own on the test's schema, named by its identity."""
    storages: list[Storage] = []
    candidates: list[Candidate] = []

    async def make(identity: str, **timing: float) -> Candidate:
        storage = await open_storage(url=pg_url)
        storages.append(storage)
        assert isinstance(storage.leadership, PostgresLeadership)
        leadership = PostgresLeadership(storage.leadership.db, identity=identity, **timing)
        candidates.append(Candidate(leadership))
        return candidates[-1]

    yield make
    for candidate in candidates:
        await candidate.stop()
    for storage in storages:
        await storage.close()


async def terminate(pg_url: str, identity: str) -> int:
    """End the leadership session of `identity` from the server side, as a restarted server or a DBA would."""
    conn = await asyncpg.connect(pg_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                f"parley {identity}",
            )
        )
    finally:
        await conn.close()


async def test_of_two_processes_one_leads_and_the_other_follows_naming_it(opened: Open) -> None:
    a = (await opened("replica-a")).campaign()
    await until(lambda: a.running, "a leads")
    b = (await opened("replica-b")).campaign()
    await until(lambda: b.role is not None, "b's first attempt")
    await asyncio.sleep(1.5)  # b tries again meanwhile, and still follows
    assert a.roles == [Role(leading=True, leader="replica-a")]
    assert b.roles == [Role(leading=False, leader="replica-a")]
    assert not b.running and b.terms == 0


async def test_a_leader_whose_session_ends_stops_at_once_and_another_takes_over(opened: Open, pg_url: str) -> None:
    a = (await opened("replica-a")).campaign()
    await until(lambda: a.running, "a leads")
    b = (await opened("replica-b")).campaign()
    await until(lambda: b.role is not None, "b follows")

    assert await terminate(pg_url, "replica-a") == 1
    stopped = await until(lambda: not a.running, "a's duty stops", timeout_s=3)
    took_over = await until(lambda: b.running, "b takes over", timeout_s=5)
    assert stopped < 0.5  # the closed connection is noticed at once, not at the next check
    assert took_over < 2.5  # b tries every second
    await until(lambda: a.role == Role(leading=False, leader="replica-b"), "a follows b")
    assert a.terms == 1 and b.terms == 1


async def test_a_leader_that_falls_silent_is_cut_off_by_the_server(opened: Open) -> None:
    # No checks of its own (a stalled process, a host gone): the server ends the silent session.
    a = (await opened("replica-a", check_s=60, silent_s=0.3)).campaign()
    await until(lambda: a.running, "a leads")
    b = (await opened("replica-b")).campaign()
    await until(lambda: not a.running, "the server cuts a off", timeout_s=3)
    await until(lambda: b.running, "b takes over", timeout_s=3)


async def test_a_duty_that_ends_gives_leadership_up(opened: Open) -> None:
    finished = asyncio.Event()

    async def short_duty() -> None:
        await finished.wait()

    first = await opened("replica-a")
    hold = asyncio.create_task(first.leadership.hold(NAME, short_duty, first.roles.append))
    await until(lambda: first.roles, "a leads")
    b = (await opened("replica-b")).campaign()
    await until(lambda: b.role == Role(leading=False, leader="replica-a"), "b follows a")
    finished.set()
    await asyncio.wait_for(hold, 2)  # hold returns: the duty is done
    await until(lambda: b.running, "b takes over", timeout_s=3)


async def test_a_duty_that_fails_raises_from_hold_and_leadership_passes_on(opened: Open) -> None:
    async def failing() -> None:
        await asyncio.sleep(0.05)
        # A database error of the duty's own is its outcome, not a lost election to try again.
        raise TransientStoreError("the duty's own database error")

    first = await opened("replica-a")
    with pytest.raises(TransientStoreError, match="duty's own"):
        await asyncio.wait_for(first.leadership.hold(NAME, failing), 3)
    b = (await opened("replica-b")).campaign()
    await until(lambda: b.running, "b leads")


async def test_cancelling_hold_stops_the_duty_and_frees_the_name(opened: Open) -> None:
    a = (await opened("replica-a")).campaign()
    await until(lambda: a.running, "a leads")
    b = (await opened("replica-b")).campaign()
    await until(lambda: b.role is not None, "b follows")
    await a.stop()
    assert not a.running
    await until(lambda: b.running, "b takes over", timeout_s=3)


async def test_each_name_and_each_schema_is_an_election_of_its_own(opened: Open, pg_dsn: str) -> None:
    gateway = (await opened("replica-a")).campaign()
    other_name = (await opened("replica-b")).campaign("another-duty")
    await until(lambda: gateway.running and other_name.running, "both lead")

    run_sync(_execute(pg_dsn, "CREATE SCHEMA t_leadership_other"))
    storage = await open_storage(url=schema_url(pg_dsn, "t_leadership_other"))
    try:
        assert isinstance(storage.leadership, PostgresLeadership)
        elsewhere = Candidate(PostgresLeadership(storage.leadership.db, identity="replica-c")).campaign()
        await until(lambda: elsewhere.running, "the other schema's candidate leads too")
        await elsewhere.stop()
    finally:
        await storage.close()
        run_sync(_execute(pg_dsn, "DROP SCHEMA t_leadership_other CASCADE"))


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_an_unreachable_database_is_reported_once_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    db = Database(None, "postgresql://parley:hunter2@127.0.0.1:1/parley")
    candidate = Candidate(PostgresLeadership(db, identity="replica-a", retry_s=0.02)).campaign()
    with caplog.at_level(logging.WARNING, logger="parley.storage"):
        await asyncio.sleep(0.3)
    await candidate.stop()
    assert candidate.roles == [Role(leading=False)] and candidate.terms == 0
    [warning] = [r.getMessage() for r in caplog.records if "campaign" in r.getMessage()]
    assert "cannot reach PostgreSQL at postgresql://parley:***@127.0.0.1:1/parley" in warning
    assert "hunter2" not in caplog.text


async def test_on_sqlite_the_one_process_always_leads() -> None:
    candidate = Candidate(SoleLeadership(identity="solo")).campaign()
    await until(lambda: candidate.running, "it leads")
    assert candidate.roles == [Role(leading=True, leader="solo")]
    await candidate.stop()
    assert not candidate.running
