"""The SQLite database: migrations from empty and from every earlier version, clear start-up errors, transactions."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.approvals import PromptLocation
from agent.messages import Conversation, IncomingMessage
from agent.storage import Storage
from agent.storage.errors import StoreError, TransientStoreError
from agent.storage.rows import NEW_INBOX_COLUMNS, inbox_values
from agent.storage.sqlite.database import Database, marks
from agent.storage.sqlite.migrations import LATEST_VERSION, MIGRATIONS
from agent.storage.sqlite.storage import SqliteStorage
from agent.storage.terms import channel_terms

# Rows written at each schema version, to prove later migrations keep them.
SEED = {
    1: ("INSERT INTO conversations (channel, thread, created_at, updated_at) VALUES ('c', '', 1, 1)",),
    2: (
        "INSERT INTO facts (channel, key, value, created_at, updated_at, last_access, key_terms, value_terms) "
        f"VALUES ('c', 'standup', 'at 9:30', 1, 1, 1, '{channel_terms('c', 'standup')}', '')",
    ),
    3: ("INSERT INTO working_memory (channel, thread, key, value, updated_at) VALUES ('c', '', 'k', 'v', 1)",),
    4: (
        "INSERT INTO chains (channel, question, answer, status, model, started_at, duration_ms) "
        "VALUES ('c', 'q', 'a', 'answered', 'm', 1, 1)",
    ),
    5: (
        "INSERT INTO tool_executions (tool, args, outcome, observation, duration_ms, started_at) "
        "VALUES ('calculator', '{}', 'ok', '4', 1, 1)",
    ),
    6: (
        "INSERT INTO inbox (platform, event_key, conversation, message, received_at, updated_at) "
        "VALUES ('slack', 'E1', 'slack|c|', '{}', 1, 1)",
    ),
    7: ("INSERT INTO approval_audit (at, action, outcome) VALUES (1, 'requested', 'pending')",),
    8: ("INSERT INTO job_runs (job, slot, started_at) VALUES ('prune', '2024-01-01T03:00', 1)",),
    9: (
        "INSERT INTO approvals (id, tool, args, args_hash, level, platform, channel, requester, created_at, "
        "expires_at, prompt_platform, prompt_channel, prompt_message) VALUES ('r9', 'deploy', '{}', 'h', 'approve', "
        "'slack', 'slack:T/C', 'U1', 1, 2, 'slack', 'C', '1.1')",
    ),
    10: (
        "INSERT INTO chain_attachments (chain_id, idx, name, media_type, size, sha256, outcome) "
        "VALUES (1, 0, 'notes.txt', 'text/plain', 12, 'ab', 'used')",
    ),
    11: (
        "INSERT INTO usage (at, channel, user_id, model, calls, input_tokens, output_tokens) "
        "VALUES (1, 'c', 'slack:U1', 'm', 1, 10, 2)",
        "INSERT INTO channel_settings (scope, key, value, updated_at) VALUES ('c', 'model', 'fast', 1)",
        "INSERT INTO setting_changes (scope, key, new, at) VALUES ('c', 'model', 'fast', 1)",
    ),
}


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}


async def test_migrates_empty_database_to_latest(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "new.db")
    try:
        assert await db.version() == LATEST_VERSION == len(MIGRATIONS)
        row = await db.fetchone("PRAGMA journal_mode")
        assert row is not None and row[0] == "wal"
    finally:
        await db.close()
    assert {
        "conversations",
        "facts",
        "facts_fts",
        "working_memory",
        "chains",
        "tool_executions",
        "inbox",
        "approval_audit",
        "job_runs",
    } <= tables(tmp_path / "new.db")


@pytest.mark.parametrize("start", range(1, LATEST_VERSION))
async def test_migrates_from_each_earlier_version_keeping_rows(tmp_path: Path, start: int) -> None:
    path = tmp_path / "old.db"
    old = await Database.open(path, migrate_to=start)
    assert await old.version() == start

    def seed(db: sqlite3.Connection) -> None:
        for version in range(1, start + 1):
            for sql in SEED[version]:
                db.execute(sql)

    await old.write(seed)
    await old.close()

    storage = await SqliteStorage.open(path)
    try:
        assert await storage.db.version() == LATEST_VERSION
        for version in range(1, start + 1):
            table = SEED[version][0].split()[2]
            row = await storage.db.fetchone(f"SELECT count(*) FROM {table}")
            assert row is not None and row[0] == 1, table
        if start >= 2:  # a fact written before the later steps is still found by full-text search
            assert [f.key for f in await storage.facts.relevant("c", "standup")] == ["standup"]
    finally:
        await storage.close()


async def test_an_unfinished_message_from_before_streams_has_none_and_can_stream(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = await Database.open(path, migrate_to=10)
    said = IncomingMessage(platform="slack", channel="C1", user="U1", text="hi", event_id="E1")
    await old.write(
        lambda db: db.execute(
            f"INSERT INTO inbox ({NEW_INBOX_COLUMNS}) VALUES ({marks(NEW_INBOX_COLUMNS)})", inbox_values(said, 1.0)
        )
    )
    await old.close()

    storage = await SqliteStorage.open(path)
    try:
        [entry] = await storage.inbox.unfinished(["slack"])
        assert entry.stream == ""
        await storage.inbox.streaming(entry.id, "1700000000.000100")
        assert [e.stream for e in await storage.inbox.unfinished(["slack"])] == ["1700000000.000100"]
        assert (await storage.usage.spent(since=0.0)).answers == 0
    finally:
        await storage.close()


async def test_an_approval_request_from_before_prompt_locations_gets_one_and_its_prompt_is_tracked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    old = await Database.open(path, migrate_to=8)
    await old.write(
        lambda db: db.execute(
            "INSERT INTO approvals (id, tool, args, args_hash, level, platform, channel, requester, created_at, "
            "expires_at) VALUES ('r1', 'deploy', '{\"service\": \"api\"}', 'h', 'approve', 'slack', 'slack:T/C', "
            "'U1', 1, 2)"
        )
    )
    await old.close()

    storage = await SqliteStorage.open(path)
    try:
        approvals = storage.approvals
        request = await approvals.get("r1")
        assert request is not None and request.prompt is None and request.args == {"service": "api"}
        await approvals.shown("r1", PromptLocation("slack", "C", "1700000000.000100"))
        assert await approvals.open_prompts() == []  # still pending: its prompt is meant to have buttons
        [expired] = await approvals.expire_pending("restart", now=time.time())
        assert expired.prompt == PromptLocation("slack", "C", "1700000000.000100")
        assert [r.id for r in await approvals.open_prompts()] == ["r1"]
        await approvals.prompt_closed("r1", now=time.time())
        assert await approvals.open_prompts() == []
    finally:
        await storage.close()


async def test_refuses_a_database_newer_than_the_code(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this code"):
        await Database.open(path)


async def test_corrupted_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(StoreError, match="not a valid SQLite database"):
        await Database.open(path)


async def test_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    await (await Database.open(path)).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            await Database.open(path, busy_timeout_ms=50)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_transaction_rolls_back_on_error(storage: Storage, db: Database) -> None:
    def fail(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO conversations (channel, thread, created_at, updated_at) VALUES ('x', '', 1, 1)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.write(fail)
    assert await storage.turns.recent(Conversation("x")) == []
    row = await db.fetchone("SELECT count(*) FROM conversations")
    assert row is not None and row[0] == 0
    await storage.turns.add(Conversation("x"), "user", "still writable")
    assert [t.text for t in await storage.turns.recent(Conversation("x"))] == ["still writable"]


async def test_a_write_that_fails_is_undone_alone_and_the_writer_keeps_going(db: Database) -> None:
    class Abort(BaseException):
        pass

    def insert(channel: str) -> Callable[[sqlite3.Connection], None]:
        def work(conn: sqlite3.Connection) -> None:
            sql = "INSERT INTO conversations (channel, thread, created_at, updated_at) VALUES (?, '', 1, 1)"
            conn.execute(sql, (channel,))
            if channel == "bad":
                raise Abort

        return work

    results = await asyncio.gather(*(db.write(insert(c)) for c in ("a", "bad", "b")), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType", "Abort", "NoneType"]
    rows = await db.fetchall("SELECT channel FROM conversations ORDER BY channel")
    assert [r[0] for r in rows] == ["a", "b"]
    await db.write(insert("c"))  # the writer was not left stuck


async def test_a_full_disk_fails_every_write_of_the_batch_with_the_real_error(db: Database) -> None:
    await db.write(lambda conn: conn.execute("PRAGMA max_page_count = 1"))  # nothing more fits

    def grow(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO working_memory VALUES ('c', '', ?, ?, 1)", (str(id(conn)), "x" * 100_000))

    results = await asyncio.gather(db.write(grow), db.write(grow), return_exceptions=True)
    # The seam's error (not a retryable one: a full disk does not pass by waiting), caused by SQLite's own.
    assert all(
        type(r) is StoreError and "full" in str(r) and isinstance(r.__cause__, sqlite3.OperationalError)
        for r in results
    ), results
    await db.write(lambda conn: conn.execute("PRAGMA max_page_count = 1000000"))
    await db.write(grow)


async def test_a_locked_write_is_a_transient_error_and_the_writer_recovers(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "busy.db", busy_timeout_ms=50)
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(TransientStoreError, match="locked") as raised:
            await db.write(lambda conn: conn.execute("DELETE FROM conversations"))
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        holder.execute("ROLLBACK")
        await db.write(lambda conn: conn.execute("DELETE FROM conversations"))
    finally:
        holder.close()
        await db.close()


async def test_writing_after_close_is_a_clear_error(tmp_path: Path) -> None:
    closed = await Database.open(tmp_path / "closed.db")
    await closed.close()
    with pytest.raises(StoreError, match="is closed"):
        await closed.write(lambda db: None)


async def test_status_of_an_older_file_counts_the_tables_it_has(tmp_path: Path) -> None:
    """`parley db status` opens without migrating: a file from before the chains table still reports."""
    old = await Database.open(tmp_path / "old.db", migrate_to=3)
    storage = SqliteStorage(old)
    try:
        status = await storage.status()
    finally:
        await storage.close()
    assert (status.schema_version, status.latest_version) == (3, LATEST_VERSION)
    assert set(status.rows) == {"conversations", "turns", "facts", "working_memory"}
