"""What only the PostgreSQL engine has to prove: migrations under concurrent start-up, the database refusing
audit edits, errors that name the fault without the password, the GIN index, the copy from SQLite, and one
pass over every repository (the behaviour both engines share is the contract suite's). `pg_dsn` and `pg_url`
come from tests/pg.py through conftest."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from yarl import URL

from agent.approvals.models import ApprovalRequest, ApprovalState, args_hash
from agent.messages import Conversation, IncomingMessage, Reply, Step
from agent.storage import mask_url
from agent.storage.copy import copy_database
from agent.storage.errors import StoreError, StoreMisconfigured, TransientStoreError
from agent.storage.models import ChainRecord, Execution, PrunePolicy, State
from agent.storage.postgres.database import marks
from agent.storage.postgres.memory import RELEVANT, tsquery
from agent.storage.postgres.schema import LATEST_VERSION, MIGRATIONS
from agent.storage.postgres.storage import PostgresStorage
from agent.storage.rows import NEW_INBOX_COLUMNS, inbox_values
from agent.storage.sqlite.storage import SqliteStorage
from agent.storage.terms import channel_terms, scope_token
from tests.pg import execute, run_sync

CONV = Conversation("team", "")


def request(request_id: str = "r1", *, expires_at: float | None = None) -> ApprovalRequest:
    args = {"path": "/tmp/x"}
    now = time.time()
    return ApprovalRequest(
        id=request_id,
        tool="delete_file",
        args=args,
        args_hash=args_hash("delete_file", args),
        level="approve",
        platform="slack",
        channel="slack:T1/C1",
        thread="",
        requester="U1",
        created_at=now,
        expires_at=expires_at if expires_at is not None else now + 300,
    )


def chain(question: str = "what colour is the sky?", answer: str = "blue") -> ChainRecord:
    return ChainRecord(
        question=question,
        answer=answer,
        status="answered",
        model="scripted",
        started_at=time.time(),
        duration_ms=12.5,
        steps=(Step("look it up", "search", {"q": "sky"}, "blue", outcome="ok", model_ms=3.0),),
        user_id="U1",
        model_calls=2,
        input_tokens=100,
        output_tokens=20,
    )


def prune_nothing_but_audit(audit_before: float) -> PrunePolicy:
    return PrunePolicy(
        now=time.time(),
        fact_max_age_days=10_000,
        turns_before=0,
        chains_before=0,
        inbox_before=0,
        job_runs_before=0,
        audit_before=audit_before,
    )


# Migrations -----------------------------------------------------------------------------------------------


async def test_two_processes_opening_a_fresh_schema_together_migrate_it_once(pg_url: str) -> None:
    first, second = await asyncio.gather(PostgresStorage.open(pg_url), PostgresStorage.open(pg_url))
    try:
        rows = await first.db.fetch("SELECT version, COUNT(*) FROM schema_migrations GROUP BY version ORDER BY 1")
        assert [(r[0], r[1]) for r in rows] == [(v, 1) for v in range(1, LATEST_VERSION + 1)]
        assert (await second.status()).schema_version == LATEST_VERSION
    finally:
        await first.close()
        await second.close()


async def test_a_schema_newer_than_the_code_is_refused_with_or_without_migrating(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url)
    await storage.db.execute("INSERT INTO schema_migrations VALUES ($1, $2)", LATEST_VERSION + 1, time.time())
    await storage.close()
    newer = f"schema version {LATEST_VERSION + 1}, newer than this code ({LATEST_VERSION})"
    for migrate in (True, False):
        with pytest.raises(StoreError, match=re.escape(newer)):
            await PostgresStorage.open(pg_url, migrate=migrate)


async def test_opening_without_migrating_leaves_an_empty_schema_alone(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url, migrate=False)
    try:
        status = await storage.status()
        assert (status.engine, status.schema_version, status.latest_version) == ("postgres", 0, LATEST_VERSION)
        assert set(status.rows.values()) == {0}
        assert await storage.db.fetchval("SELECT to_regclass('facts')") is None
    finally:
        await storage.close()


async def test_a_schema_from_before_channels_and_usage_migrates_keeping_its_unfinished_messages(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION)")
        for version in (1, 2, 3):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", version)
        said = IncomingMessage(platform="slack", channel="C1", user="U1", text="hi", event_id="E1")
        await conn.execute(
            f"INSERT INTO inbox ({NEW_INBOX_COLUMNS}) VALUES ({marks(NEW_INBOX_COLUMNS)})", *inbox_values(said, 1.0)
        )
    finally:
        await conn.close()
    storage = await PostgresStorage.open(pg_url)
    try:
        assert (await storage.status()).schema_version == LATEST_VERSION
        [entry] = await storage.inbox.unfinished(["slack"])
        assert (entry.message.text, entry.stream) == ("hi", "")
        await storage.channel_settings.set("slack:T1/C1", "model", "fast", actor="slack:boss", now=1.0)
        assert await storage.channel_settings.values(["slack:T1/C1"]) == {"slack:T1/C1": {"model": "fast"}}
    finally:
        await storage.close()


# The audit ------------------------------------------------------------------------------------------------


async def test_the_database_refuses_to_edit_the_audit_but_lets_prune_drop_old_rows(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url)
    try:
        await storage.approvals.create(request())
        for statement in (
            "UPDATE approval_audit SET actor = 'someone else'",
            "DELETE FROM approval_audit",
            "TRUNCATE approval_audit",
        ):
            with pytest.raises((StoreError, asyncpg.PostgresError), match="append-only"):
                await storage.db.execute(statement)
        assert len(await storage.approvals.audit()) == 1

        # A cutoff before the row keeps it; one after it lets the prune delete it, and leaves no cutoff behind.
        assert (await storage.prune(prune_nothing_but_audit(time.time() - 3600)))["audit rows"] == 0
        assert (await storage.prune(prune_nothing_but_audit(time.time() + 1)))["audit rows"] == 1
        assert await storage.approvals.audit() == []
        assert await storage.db.fetchval("SELECT COUNT(*) FROM audit_retention") == 0
    finally:
        await storage.close()


# Errors ---------------------------------------------------------------------------------------------------


async def test_an_unreachable_server_is_a_transient_error_without_the_password() -> None:
    url = "postgresql://parley:s3cret-horse@127.0.0.1:1/parley"
    started = time.monotonic()
    with pytest.raises(TransientStoreError) as caught:
        await PostgresStorage.open(url)
    assert time.monotonic() - started < 5
    text = str(caught.value)
    assert text.startswith("cannot reach PostgreSQL at postgresql://parley:***@127.0.0.1:1/parley: ")
    assert "s3cret-horse" not in text and "\n" not in text


async def test_a_wrong_password_names_the_user_but_not_the_password(pg_dsn: str) -> None:
    role = f"p_{uuid.uuid4().hex[:12]}"
    try:
        run_sync(execute(pg_dsn, f"CREATE ROLE {role} LOGIN PASSWORD 'right-battery'"))
    except asyncpg.InsufficientPrivilegeError:
        pytest.skip("the test server's user may not create roles")
    url = str(URL(pg_dsn).with_user(role).with_password("wrong-staple"))
    try:
        storage = await PostgresStorage.open(url, migrate=False)
    except StoreError as exc:
        refused = exc
    else:
        await storage.close()
        pytest.skip("the test server does not ask this user for a password")
    finally:
        run_sync(execute(pg_dsn, f"DROP ROLE {role}"))
    assert isinstance(refused, StoreMisconfigured)  # start-up stops with exit 2: retrying cannot help
    assert str(refused) == f"PostgreSQL refused the password for user {role} at {mask_url(url)}"
    assert "wrong-staple" not in str(refused)


async def test_an_unknown_database_is_named(pg_dsn: str) -> None:
    dsn = URL(pg_dsn)
    url = str(dsn.with_path("/no_such_parley_db").with_query(dsn.query))
    with pytest.raises(StoreError, match='database "no_such_parley_db" does not exist') as caught:
        await PostgresStorage.open(url)
    assert isinstance(caught.value, StoreMisconfigured)


async def test_a_connection_lost_mid_query_is_a_transient_error_and_the_pool_recovers(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url, pool_size=1)
    admin = await asyncpg.connect(pg_url)
    try:
        sleeping = asyncio.create_task(storage.db.fetchval("SELECT pg_sleep(30)"))
        backend = None
        while backend is None and not sleeping.done():
            await asyncio.sleep(0.01)
            backend = await admin.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()"
            )
        await admin.execute("SELECT pg_terminate_backend($1)", backend)
        with pytest.raises(TransientStoreError):
            await sleeping
        assert await storage.jobs.mark("export", "last_id") is None
    finally:
        await admin.close()
        await storage.close()


async def test_a_transaction_translates_database_errors_and_passes_the_callers_own_through(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url)
    try:
        with pytest.raises(StoreError, match=r"^PostgreSQL: division by zero$"):
            async with storage.db.transaction() as conn:
                await conn.execute("SELECT 1 / 0")
        with pytest.raises(BrokenPipeError):
            async with storage.db.transaction() as conn:
                await conn.execute("INSERT INTO job_state VALUES ('export', 'last_id', '7')")
                raise BrokenPipeError("the caller's pipe, not the database's")
        assert await storage.jobs.mark("export", "last_id") is None
    finally:
        await storage.close()


# Facts ----------------------------------------------------------------------------------------------------


async def test_the_fact_query_walks_the_gin_index_of_channel_folded_terms(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url)
    try:
        # 4,000 facts in 4 channels, each with a common word and a word of its own.
        rows = []
        for n in range(1, 4001):
            channel, key, value = f"c{n % 4}", f"key{n}", f"common word{n}"
            rows.append((channel, key, value, channel_terms(channel, key), channel_terms(channel, value)))
        async with storage.db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO facts (channel, key, value, created_at, updated_at, last_access, key_terms, value_terms) "
                "VALUES ($1, $2, $3, 0, 0, 0, $4, $5)",
                rows,
            )
        await storage.db.execute("ANALYZE facts")
        plan = await storage.db.fetch(f"EXPLAIN {RELEVANT}", "c3", tsquery("c3", ["word107"]), 5)
        assert "Bitmap Index Scan on facts_search" in "\n".join(r[0] for r in plan)
        found = await storage.facts.relevant("c3", "where is word107?")
        assert [f.key for f in found] == ["key107"]
    finally:
        await storage.close()


FACTS = [
    ("favourite colour", "blue"),
    ("office", "the colour of the walls is green"),
    ("deploy day", "friday after the standup"),
    ("standup", "daily at nine in room 4"),
    ("database", "postgres 18 on the shared cluster"),
    ("cluster owner", "the platform team"),
]
QUERIES = ["colour", "what is the favourite colour", "standup", "when do we deploy", "cluster", "room 4", "nothing"]


async def test_facts_rank_as_on_sqlite(pg_url: str, tmp_path: Path) -> None:
    postgres = await PostgresStorage.open(pg_url)
    sqlite = await SqliteStorage.open(tmp_path / "parley.db")
    try:
        for key, value in FACTS:
            await postgres.facts.add("team", key, value)
            await sqlite.facts.add("team", key, value)
        for query in QUERIES:
            on_postgres = [f.key for f in await postgres.facts.relevant("team", query, k=3)]
            on_sqlite = [f.key for f in await sqlite.facts.relevant("team", query, k=3)]
            assert on_postgres == on_sqlite, query
        # A key match comes before a value match of the same word.
        best = await postgres.facts.relevant("team", "colour", k=1)
        assert [f.key for f in best] == ["favourite colour"]
    finally:
        await postgres.close()
        await sqlite.close()


async def test_relevant_with_touch_counts_an_access_and_returns_the_facts_as_they_were(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url)
    try:
        await storage.facts.add("team", "standup", "daily at nine")
        before = (await storage.facts.of_channel("team"))[0]
        [found] = await storage.facts.relevant("team", "standup", touch=True)
        after = (await storage.facts.of_channel("team"))[0]
        assert found == before
        assert after.access_count == before.access_count + 1 and after.last_access >= before.last_access
    finally:
        await storage.close()


# Copying from SQLite --------------------------------------------------------------------------------------


async def test_a_sqlite_database_copies_in_with_its_ids_and_new_rows_follow_them(pg_url: str, tmp_path: Path) -> None:
    sqlite = await SqliteStorage.open(tmp_path / "parley.db")
    postgres = await PostgresStorage.open(pg_url)
    try:
        await sqlite.facts.add("team", "favourite colour", "blue")
        entry = await sqlite.inbox.accept(IncomingMessage("console", "team", "ann", "hi", message_id="m1"))
        assert entry is not None
        await sqlite.record_exchange(CONV, chain(), Reply("blue"), inbox_id=entry.id)
        await sqlite.approvals.create(request())
        await sqlite.jobs.set_mark("export", "last_id", "1")
        assert await postgres.is_empty()

        copied = await copy_database(sqlite, postgres)

        assert copied["turns"] == 2 and copied["chain_steps"] == 1 and copied["approval_audit"] == 1
        assert not await postgres.is_empty()
        # The SQLite facts' channel-folded index terms were rebuilt: the copied fact is found.
        assert [f.key for f in await postgres.facts.relevant("team", "colour")] == ["favourite colour"]
        assert [t.text for t in await postgres.turns.recent(CONV)] == ["what colour is the sky?", "blue"]
        # Identities continue above the copied ids.
        again = await postgres.inbox.accept(IncomingMessage("console", "team", "ann", "again", message_id="m2"))
        assert again is not None and again.id == entry.id + 1
    finally:
        await sqlite.close()
        await postgres.close()


async def test_loading_an_unknown_table_or_column_is_refused(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url)
    try:
        with pytest.raises(ValueError, match="no table"):
            await storage.load_rows("users", [{"id": 1}])
        with pytest.raises(ValueError, match="no column"):
            await storage.load_rows("job_state", [{"job": "j", "key": "k", "value": "v", "extra": 1}])
    finally:
        await storage.close()


# Every repository, once -----------------------------------------------------------------------------------


async def test_every_repository_works_on_postgres(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url, max_turns=3)
    try:
        assert storage.engine == "postgres" and storage.location == mask_url(pg_url)
        await storage.ping(now=1.0)
        assert await storage.jobs.mark("readyz", "checked_at") == "1.0"

        # Inbox and the exchange.
        message = IncomingMessage("slack", "C1", "U1", "what colour is the sky?", workspace="T1", event_id="Ev1")
        entry = await storage.inbox.accept(message)
        assert entry is not None and await storage.inbox.accept(message) is None
        await storage.inbox.start(entry.id)
        recorded = await storage.record_exchange(message.conversation, chain(), Reply("blue"), inbox_id=entry.id)
        assert recorded.chain_id is not None
        assert [e.id for e in await storage.inbox.unfinished(["slack"])] == [entry.id]
        stored = await storage.inbox.get(entry.id)
        assert stored is not None and stored.state is State.ANSWERED and stored.attempts == 1
        assert stored.reply is not None and stored.reply.chain_id == recorded.chain_id
        await storage.inbox.delivered(entry.id)
        assert await storage.inbox.unfinished(["slack"]) == []
        assert [e.id for e in await storage.inbox.recent()] == [entry.id]

        # Turns, bounded per channel; notes; chains.
        turns = await storage.turns.recent(message.conversation)
        assert [(t.role, t.text) for t in turns] == [("user", "what colour is the sky?"), ("assistant", "blue")]
        for n in range(3):
            await storage.turns.add(message.conversation, "user", f"more {n}")
        assert [t.text for t in await storage.turns.of_channel(message.conversation.channel)] == [
            "more 0",
            "more 1",
            "more 2",
        ]
        await storage.notes.set(CONV, "topic", "sky")
        assert await storage.notes.of(CONV) == {"topic": "sky"}
        steps = await storage.chains.steps(recorded.chain_id)
        assert [(s.tool, s.args, s.model_ms) for s in steps] == [("search", {"q": "sky"}, 3.0)]
        assert await storage.chains.count() == 1
        chains = [c async for c in storage.chains.since(0.0)]
        assert chains[0]["id"] == recorded.chain_id and chains[0]["steps"][0]["tool"] == "search"
        stats = await storage.chains.stats()
        assert (stats.chains, stats.mean_steps, stats.input_tokens, stats.tool_usage) == (1, 1.0, 100, {"search": 1})

        # Facts.
        await storage.facts.add("team", "favourite colour", "blue")
        await storage.facts.add("team", "favourite colour", "green")
        fact = await storage.facts.get("team", "favourite colour")
        assert fact is not None and fact.value == "green" and fact.access_count == 2
        assert [f.key for f in await storage.facts.relevant("team", "colour")] == ["favourite colour"]
        assert await storage.facts.relevant("other", "colour") == []
        assert await storage.facts.prune(0, now=time.time() + 1) == 1

        # Executions.
        await storage.executions.record(Execution("search", {"q": "sky"}, "ok", "blue", 5.0, time.time(), "run1"))
        await storage.executions.record(Execution("search", {"q": "sea"}, "error", "boom", 9.0, time.time(), "run1"))
        assert [e.observation for e in await storage.executions.for_run("run1")] == ["blue", "boom"]
        tool = (await storage.executions.stats())["search"]
        assert (tool.calls, tool.successes, tool.failures, tool.mean_ms, tool.p95_ms) == (2, 1, 1, 7.0, 9.0)
        assert len(await storage.executions.recent(1)) == 1

        # Approvals: a compare-and-set settles once.
        pending = request()
        await storage.approvals.create(pending)
        settled = await storage.approvals.settle(pending, ApprovalState.APPROVED, actor="slack:U2", now=time.time())
        assert settled is not None and settled.state is ApprovalState.APPROVED and settled.decided_by == "slack:U2"
        again = await storage.approvals.settle(pending, ApprovalState.DENIED, actor="slack:U3", now=time.time())
        assert again is None
        assert [(a.action, a.outcome) for a in await storage.approvals.audit()] == [
            ("requested", "pending"),
            ("approved", "approved"),
            ("denied", "refused"),
        ]
        await storage.approvals.grant("delete_file", "slack:T1/C1", "slack:U2", now=1.0)
        assert [g.tool for g in await storage.approvals.grants()] == ["delete_file"]
        assert await storage.approvals.revoke("delete_file", "slack:T1/C1", "slack:U2")
        assert await storage.approvals.granted("delete_file", "slack:T1/C1") is None

        # Jobs: a slot is claimed once.
        assert await storage.jobs.claim("summary", "2026-12-01", started_at=10.0)
        assert not await storage.jobs.claim("summary", "2026-12-01", started_at=11.0)
        await storage.jobs.finish("summary", "2026-12-01", "ok", finished_at=12.0)
        assert await storage.jobs.last_ok("summary") == 10.0
        assert (await storage.jobs.last_runs())["summary"].state == "ok"

        # Stats over a window.
        window = await storage.stats.window(0.0, time.time() + 1)
        assert window.by_status == {"answered": 1} and window.model_calls == 2 and window.tools == {"search": (2, 1)}
        assert window.approvals == {"approved": 1} and len(window.latencies_s) == 1

        # Forget, export and import.
        exported = await storage.export_channel(message.conversation.channel)
        assert (await storage.forget(message.conversation.channel))["turns"] == 3
        await storage.import_channel(exported)
        assert len(await storage.turns.of_channel(message.conversation.channel)) == 3
        status = await storage.status()
        assert status.rows["approval_audit"] == 5 and status.schema_version == LATEST_VERSION
    finally:
        await storage.close()
        await storage.close()


async def test_of_two_decisions_at_once_exactly_one_wins(pg_url: str) -> None:
    storage = await PostgresStorage.open(pg_url, pool_size=4)
    try:
        pending = request()
        await storage.approvals.create(pending)
        outcomes = await asyncio.gather(
            *(
                storage.approvals.settle(pending, state, actor=f"slack:U{n}", now=time.time())
                for n, state in enumerate([ApprovalState.APPROVED, ApprovalState.DENIED] * 4)
            )
        )
        assert len([o for o in outcomes if o is not None]) == 1
    finally:
        await storage.close()


def test_a_fact_query_is_the_channels_folded_terms_quoted() -> None:
    scope = scope_token("c")
    assert tsquery("c", ["deploy", "o'brien"]) == f"'{scope}deploy' | '{scope}o''brien'"
